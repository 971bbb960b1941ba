"""The FPS harness on CPU with tiny models and a simulated clock, and per-component latency."""
import pytest
import torch
from torch import nn

from mscsa_lab import create_mscsa_model
from mscsa_lab.bench.fps import compare_fps, measure_fps
from mscsa_lab.bench.settings import BenchmarkSettings, resolve_device
from mscsa_lab.bench.latency import component_latency


class FakeClock:
    """Time advances only when a model says a forward pass cost something."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class CostlyModel(nn.Module):
    """Costs ``slow`` seconds for its first ``slow_calls`` calls (warm-up), then ``cost`` each."""

    def __init__(self, clock, name, log, cost=0.01, slow=1.0, slow_calls=3, oom_above=None):
        super().__init__()
        self.clock, self.name, self.log = clock, name, log
        self.cost, self.slow, self.slow_calls, self.oom_above = cost, slow, slow_calls, oom_above
        self.calls = 0
        self.batches = []
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.calls += 1
        self.batches.append(x.shape[0])
        self.log.append(self.name)
        self.clock.now += self.slow if self.calls <= self.slow_calls else self.cost
        return x.mean() * self.scale


SETTINGS = dict(device="cpu", batch=4, warmup=2, steps=3, repeats=4)


def test_images_are_counted_and_warmup_is_excluded():
    clock, log = FakeClock(), []
    model = CostlyModel(clock, "a", log, cost=0.01, slow=1.0, slow_calls=3)  # trial step + 2 warm-up steps
    result = measure_fps(model, (8, 8), BenchmarkSettings(**SETTINGS), clock=clock)
    assert model.calls == 1 + 2 + 3 * 4  # trial, warm-up, timed
    assert result.images_timed == 4 * 3 * 4 and len(result.fps) == 4
    assert result.fps == pytest.approx([4 / 0.01] * 4)  # none of the slow warm-up calls was timed
    assert result.step_ms == pytest.approx(10.0)
    assert result.summary()["fps_min"] == pytest.approx(400.0)


def test_slow_steps_after_warmup_would_show():
    """Control for the test above: if slow calls fall in the timed blocks, FPS drops."""
    clock, log = FakeClock(), []
    model = CostlyModel(clock, "a", log, cost=0.01, slow=1.0, slow_calls=5)
    result = measure_fps(model, (8, 8), BenchmarkSettings(**SETTINGS), clock=clock)
    assert result.fps[0] < 4 * 3 / 1.0  # the first timed block holds two slow calls
    assert result.fps[1:] == pytest.approx([400.0] * 3)


def test_ab_models_are_interleaved_and_ratio_is_per_round():
    clock, log = FakeClock(), []
    a = CostlyModel(clock, "A", log, cost=0.01, slow_calls=0)
    b = CostlyModel(clock, "B", log, cost=0.02, slow_calls=0)
    result = compare_fps({"A": a, "B": b}, (8, 8), BenchmarkSettings(**SETTINGS), clock=clock)
    assert result.order == ["A", "B", "B", "A", "A", "B", "B", "A"]
    timed_log = log[-(3 * 4 * 2):]
    blocks = [timed_log[i] for i in range(0, len(timed_log), 3)]
    assert blocks == result.order  # the models really ran in that order
    assert result.ratio("B") == pytest.approx(0.5) and result.ratio("A") == pytest.approx(1.0)
    assert result.results["B"].fps_median == pytest.approx(200.0)


def test_out_of_memory_halves_the_batch_and_says_so():
    clock, log = FakeClock(), []
    model = CostlyModel(clock, "a", log, slow_calls=0, oom_above=2)
    result = measure_fps(model, (8, 8), BenchmarkSettings(**{**SETTINGS, "batch": 8}), clock=clock)
    assert result.batch == 2 and set(model.batches) == {2}
    assert result.notes == ["out of memory at batch 8: halved to 4", "out of memory at batch 4: halved to 2"]
    assert result.images_timed == 2 * 3 * 4


def test_other_errors_are_not_mistaken_for_oom():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        measure_fps(Broken(), (8, 8), BenchmarkSettings(**SETTINGS))


def test_settings_are_validated_and_devices_resolved():
    with pytest.raises(ValueError, match="precision='fp8' is unknown"):
        BenchmarkSettings(precision="fp8").validate()
    with pytest.raises(ValueError, match="batch must be a whole number >= 1"):
        BenchmarkSettings(batch=0).validate()
    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
            resolve_device("cuda")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "tf32"])
def test_real_model_precisions_and_thread_count(precision):
    model = create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio="1/4", num_heads=2, key_dim=8),
                               num_classes=10)
    settings = BenchmarkSettings(device="cpu", batch=2, warmup=1, steps=1, repeats=2, precision=precision,
                                 channels_last=True, threads=1)
    result = measure_fps(model, (64, 64), settings, name="r18")
    assert all(f > 0 for f in result.fps) and "1 threads" in result.device
    assert ("TF32 only changes CUDA matmuls" in " ".join(result.notes)) == (precision == "tf32")


def test_component_latency_covers_every_part():
    model = create_mscsa_model("pvt_v2_b0", num_classes=10)
    report = component_latency(model, (96, 96), BenchmarkSettings(device="cpu", batch=2, warmup=1, steps=2, repeats=1))
    frame = report.frame.set_index("Component")
    for part in ("backbone", "aggregation", "squeeze convs", "CSA 1 (block 1)", "attention matmuls",
                 "Intra-FFN (block 1)", "FFN (block 1)", "classification head"):
        times = frame.loc[part, "Time (ms)"]
        assert (times > 0).all() if hasattr(times, "all") else times > 0, part
    top = report.frame[(report.frame["Level"] == 0) & (report.frame["Group"] != "other")]
    assert top["Time (ms)"].sum() <= report.step_ms * 1.001
    assert frame.loc["FFN (block 1)", "FLOPs share (%)"] > 0
    table = report.to_table()
    assert "time/FLOPs" in table.frame.columns and table.metadata["batch"] == 2


# ------------------------------------------------------------------------------- fast path
from conftest import randomize_batchnorm  # noqa: E402
from mscsa_lab.models.config import MSCSAConfig  # noqa: E402
from mscsa_lab.models.fast import FastCrossScaleAttention, FastIntraFFN, make_fast  # noqa: E402
from mscsa_lab.models.mscsa import MSCSA  # noqa: E402

FAST_VARIANTS = [
    dict(),
    dict(downsample="cascade"),
    dict(downsample="avgpool"),
    dict(downsample="single"),
    dict(use_msp=False, use_pcp=False, use_intra_ffn=False),
    dict(squeeze_ratio=None, depth=2, act_layer="gelu"),
]


@pytest.mark.parametrize("changes", FAST_VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_fast_path_matches_reference_module(changes):
    config = MSCSAConfig(**{**dict(squeeze_ratio=0.5, num_heads=3, key_dim=8), **changes})
    module = MSCSA((16, 32, 48, 64), config).eval()
    randomize_batchnorm(module)
    features = [torch.randn(2, c, s, s + 3) for c, s in zip((16, 32, 48, 64), (40, 20, 10, 5))]
    with torch.no_grad():
        reference = module(features)
        fast = make_fast(module)
        out = fast(features)
    assert all(isinstance(m, FastCrossScaleAttention) for m in (fast.blocks[0].attn1, fast.blocks[0].attn2))
    assert isinstance(fast.blocks[0].intra_ffn, FastIntraFFN) == config.use_intra_ffn
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("task", ["classification", "dense"])
def test_fast_path_matches_reference_model(task):
    model = create_mscsa_model("pvt_v2_b0", task=task, num_classes=10).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        reference = model(x)
        fast = make_fast(model, channels_last=True)
        out = fast(x.contiguous(memory_format=torch.channels_last))
        again = model(x)
    pairs = [(reference, out)] if task == "classification" else list(zip(reference, out))
    for ref, got in pairs:
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # The reference model is left as it was.
    assert not getattr(model, "is_fused", False) and not hasattr(model, "is_fast")
    assert torch.equal(again if task == "classification" else again[0], reference if task == "classification" else reference[0])


def test_throughput_comparison_table():
    from mscsa_lab.bench.comparison import throughput_comparison

    settings = BenchmarkSettings(device="cpu", batch=2, warmup=1, steps=1, repeats=2)
    table = throughput_comparison(["resnet18"], (64, 64), settings)
    row = table.frame.iloc[0]
    assert row["Model"] == "ResNet-18" and row["Batch"] == 2
    assert row["FPS"] > 0 and row["+MSCSA FPS"] > 0 and row["+MSCSA fast FPS"] > 0
    assert row["MSCSA share of runtime (%)"] == pytest.approx(-row["dFPS fast (%)"])
    assert 0 < row["MSCSA share of FLOPs (%)"] < 100
    assert row["Drop below paper"] == "-"  # ResNet-18 is not in the paper's Table 6
    assert table.metadata["steps"] == 1 and "CPU" in table.metadata["device"]


def test_latency_leaves_the_callers_model_alone():
    model = create_mscsa_model("pvt_v2_b0", num_classes=10).eval()
    component_latency(model, (64, 64), BenchmarkSettings(device="cpu", batch=1, warmup=0, steps=1, repeats=1,
                                                         channels_last=True))
    weight = model.mscsa.blocks[0].attn1.query.conv.weight
    assert weight.device.type == "cpu" and weight.is_contiguous()
