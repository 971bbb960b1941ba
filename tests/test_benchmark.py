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
    assert row["Smaller drop than paper"] == "-"  # ResNet-18 is not in the paper's Table 6
    assert table.metadata["steps"] == 1 and "CPU" in table.metadata["device"]
    assert row["FPS low"] <= row["FPS"] <= row["FPS high"] and row["dFPS low (%)"] <= row["dFPS (%)"] <= row["dFPS high (%)"]
    assert row["FLOPs-proportional dFPS (%)"] == pytest.approx(-row["MSCSA share of FLOPs (%)"])
    assert row["Rounds"] == 2 and "not stable" in row["Check"]  # 2 rounds: no 95% interval exists


def test_latency_leaves_the_callers_model_alone():
    model = create_mscsa_model("pvt_v2_b0", num_classes=10).eval()
    component_latency(model, (64, 64), BenchmarkSettings(device="cpu", batch=1, warmup=0, steps=1, repeats=1,
                                                         channels_last=True))
    weight = model.mscsa.blocks[0].attn1.query.conv.weight
    assert weight.device.type == "cpu" and weight.is_contiguous()


# ------------------------------------------------------------------ intervals, adaptive rounds, checks
def test_median_interval_covers_the_true_median_of_a_skewed_distribution():
    from mscsa_lab.bench.stats import median_interval

    interval = median_interval(range(20))
    assert (interval.low, interval.high, interval.exact) == (5.0, 14.0, True)  # order statistics 6 and 15
    assert not median_interval([1.0, 2.0, 3.0]).exact  # below 6 values there is no 95% interval
    generator = torch.Generator().manual_seed(0)
    true_median = torch.log(torch.tensor(2.0)).item()  # of Exp(1): the noise of a busy machine is skewed
    covered = 0
    for _ in range(400):
        sample = torch.empty(15).exponential_(generator=generator).tolist()
        interval = median_interval(sample)
        covered += interval.low <= true_median <= interval.high
    assert covered / 400 >= 0.93


def test_adaptive_rounds_stop_once_the_ratio_is_known():
    clock, log = FakeClock(), []
    a = CostlyModel(clock, "A", log, cost=0.01, slow_calls=0)
    b = CostlyModel(clock, "B", log, cost=0.02, slow_calls=0)
    settings = BenchmarkSettings(**{**SETTINGS, "repeats": 6, "max_repeats": 50})
    result = compare_fps({"A": a, "B": b}, (8, 8), settings, clock=clock)
    assert result.stopped_by == "interval" and result.rounds == 6
    interval = result.ratio_interval("B")
    assert interval.median == pytest.approx(0.5) and interval.half_width == pytest.approx(0.0, abs=1e-9)
    assert not any("stable" in w for w in result.warnings)


class NoisyModel(CostlyModel):
    """Each call costs a random amount: its ratio to another model never settles."""

    def __init__(self, *args, seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        self.cost = 0.01 * (1 + 3 * torch.rand(1, generator=self.generator).item())
        return super().forward(x)


def test_noisy_rounds_hit_the_cap_and_say_so():
    clock, log = FakeClock(), []
    a = NoisyModel(clock, "A", log, slow_calls=0, seed=1)
    b = NoisyModel(clock, "B", log, slow_calls=0, seed=2)
    settings = BenchmarkSettings(**{**SETTINGS, "repeats": 6, "max_repeats": 12, "target_interval": 0.01})
    result = compare_fps({"A": a, "B": b}, (8, 8), settings, clock=clock)
    assert result.stopped_by == "max_repeats" and result.rounds == 12
    assert any("not a stable answer" in w for w in result.warnings)
    assert any("rounds spread" in w for w in result.warnings)
    # The time cap (on the same clock as the measurement) ends a run that would go on for long.
    a2, b2 = (NoisyModel(clock, n, log, slow_calls=0, seed=s) for n, s in (("A", 3), ("B", 4)))
    capped = BenchmarkSettings(**{**SETTINGS, "repeats": 6, "max_repeats": 1000, "target_interval": 0.001,
                                  "max_seconds": 2.0})
    result = compare_fps({"A": a2, "B": b2}, (8, 8), capped, clock=clock)
    assert result.stopped_by == "time" and 6 <= result.rounds < 1000
    with pytest.raises(ValueError, match="max_repeats must be a whole number >= repeats"):
        BenchmarkSettings(repeats=6, max_repeats=3).validate()
    with pytest.raises(ValueError, match="target_interval must be a fraction"):
        BenchmarkSettings(target_interval=2).validate()


def test_other_load_sees_a_busy_neighbour():
    import os
    import subprocess
    import sys
    import time

    from mscsa_lab.bench.stats import OtherLoad

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 4\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        with OtherLoad() as load:
            time.sleep(2.0)
    finally:
        spinner.kill()
    assert load.source in ("/proc/stat", "load average")
    assert load.share >= 0.8 / (os.cpu_count() or 1)
    assert "% of the CPU" in load.describe()


def _ab(fps: dict[str, list[float]]):
    from mscsa_lab.bench.fps import ABResult, FPSResult

    results = {name: FPSResult(name, "cpu", 1, values, 1, {}) for name, values in fps.items()}
    reference = next(iter(fps))
    ratios = {name: [b / a for a, b in zip(fps[reference], values)] for name, values in fps.items()}
    return ABResult(results, ratios, list(fps))


def test_impossible_results_are_flagged_not_reported():
    from mscsa_lab.bench.comparison import _checks

    steady = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8]
    faster = _ab({"backbone": steady, "+MSCSA": [v * 1.2 for v in steady], "+MSCSA fast": [v * 1.25 for v in steady]})
    assert any(c.startswith("impossible: +MSCSA faster") for c in _checks(faster, fast=True))
    slow_fast = _ab({"backbone": steady, "+MSCSA": [v * 0.8 for v in steady], "+MSCSA fast": [v * 0.6 for v in steady]})
    assert any(c.startswith("unexpected: the fast path slower") for c in _checks(slow_fast, fast=True))
    sane = _ab({"backbone": steady, "+MSCSA": [v * 0.8 for v in steady], "+MSCSA fast": [v * 0.85 for v in steady]})
    assert _checks(sane, fast=True) == []
    # A median above 1 is impossible even when its wide interval reaches below 1 (a negative runtime share)
    noisy = [1.3, 0.7, 1.2, 0.8, 1.25, 0.75, 1.1]
    barely = _ab({"backbone": steady, "+MSCSA": [v * r for v, r in zip(steady, noisy)]})
    assert barely.ratio_interval("+MSCSA").low < 1 < barely.ratio("+MSCSA")
    assert any(c.startswith("impossible: +MSCSA faster") for c in _checks(barely, fast=False))
    unstable = _ab({"backbone": steady, "+MSCSA": [v * 0.8 for v in steady]})
    unstable.stable = False  # as _warnings marks a run whose interval missed its target
    assert f"interval +-{100 * unstable.widest_half_width():.1f}%: not stable" in _checks(unstable, fast=False)
