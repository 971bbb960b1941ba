"""Limits and cost estimates: a request that would exhaust memory or hold the server is refused
before any work, with the numbers in the message, through the library and the app's API."""
import time

import pytest
from gradio_client import Client

from mscsa_lab.analysis.cost import CostEstimate, available_memory_bytes, estimate_cost
from mscsa_lab.workflows.limits import ResourceError, ResourceLimits, check_fits

HUGE = dict(depth=24, num_heads=64, key_dim=512, mlp_ratio=16, squeeze_ratio=0.25)


@pytest.mark.slow
def test_an_enormous_configuration_is_costed_without_memory():
    started = time.perf_counter()
    estimate = estimate_cost("resnet18", **HUGE)
    assert time.perf_counter() - started < 60  # meta device: shapes only, nothing allocated
    assert estimate.params > 4e9 and estimate.param_bytes == 4 * estimate.params
    with pytest.raises(ResourceError, match=r"4\.\d+ G parameters, above this server's limit of 1\.00 G"):
        check_fits(estimate)


def test_a_model_over_the_parameter_limit_is_refused_without_being_traced():
    """The limit on parameters refuses on the count alone: the model's memory is not traced (that took
    10-15 s for a configuration of tens of billions of parameters)."""
    import math

    from mscsa_lab.workflows.limits import guard
    from mscsa_lab.workflows.spec import ModelSpec

    spec = ModelSpec.resolve("resnet18", input_size=(64, 64), settings=dict(depth=2))
    with pytest.raises(ResourceError, match=r"M parameters, above this server's limit of 1\.00 M"):
        guard(spec, ResourceLimits(max_params=10**6))
    assert math.isnan(spec.estimate(max_params=10**6).work_bytes)
    traced = spec.estimate()
    assert traced.work_bytes > 0 and traced.params == spec.estimate(max_params=10**6).params


def test_the_library_costs_a_custom_configuration_before_it_allocates(monkeypatch):
    """create_mscsa_model and timm.create_model refuse a configuration whose weights exceed the free memory
    (the free memory is pretended small here, so a regression would allocate a few hundred MB, not kill the
    machine); check_memory=False builds it for a user who knows."""
    import timm

    from mscsa_lab.analysis import cost
    from mscsa_lab.registry import create_mscsa_model

    monkeypatch.setattr(cost, "available_memory_bytes", lambda device="cpu": 64 * 2**20)
    big = dict(depth=2, mlp_ratio=8)
    with pytest.raises(ResourceError, match=r"its weights alone need \d+(\.\d+)? MiB, and 64.0 MiB of memory is "
                                            r"free\. Lower depth.*check_memory=False"):
        create_mscsa_model(backbone="resnet10t", **big)
    with pytest.raises(ResourceError, match="check_memory=False"):
        timm.create_model("resnet18_mscsa", **big)
    assert create_mscsa_model(backbone="resnet10t", check_memory=False, **big).num_classes == 1000
    assert timm.create_model("resnet18_mscsa", check_memory=False, **big).num_classes == 1000
    assert create_mscsa_model("resnet18").num_classes == 1000  # a profile as published is not costed


def test_memory_estimate_follows_batch_and_training():
    one = estimate_cost(None, "resnet18", input_size=(64, 64), batch=1)
    eight = estimate_cost(None, "resnet18", input_size=(64, 64), batch=8)
    train = estimate_cost(None, "resnet18", input_size=(64, 64), batch=8, training=True)
    assert one.params == eight.params and 6 * one.work_bytes < eight.work_bytes < 8 * one.work_bytes
    assert train.work_bytes > eight.work_bytes * 2  # saved activations, gradients, AdamW state
    one_gib = CostEstimate("x + MSCSA", (64, 64), 1, False, 2**28, 2**30, 0.0)
    with pytest.raises(ResourceError, match=r"needs about 2.00 GiB, but this server allows one request 600 MiB "
                                            r"\(60% of the 1000 MiB free now\)"):
        check_fits(one_gib, free_bytes=1000 * 2**20, copies=2)
    assert check_fits(one_gib, free_bytes=4 * 2**30) is one_gib
    assert available_memory_bytes() > 0


def test_limits_name_the_flag_that_raises_them():
    limits = ResourceLimits(max_batch=16)
    with pytest.raises(ResourceError, match=r"batch 32 is above this server's limit of 16 \(raise it with the app's "
                                            r"--max-batch\)"):
        limits.check_count("batch", 32, "max_batch")
    with pytest.raises(ResourceError, match="input 4096x4096 is above this server's limit of 2048"):
        limits.check_size(4096, 4096)
    with pytest.raises(ValueError, match="memory_fraction must be at most 1"):
        ResourceLimits(memory_fraction=2).validate()


def test_app_flags_set_the_limits(run_app_main):
    limits = run_app_main(["--max-batch", "1024", "--max-side", "4096", "--memory-fraction", "0.9",
                           "--max-fps-seconds", "5"])["context"].limits
    assert (limits.max_batch, limits.max_side, limits.memory_fraction, limits.max_fps_seconds) == (1024, 4096, 0.9, 5)


def test_a_comparison_times_fps_for_the_servers_seconds_per_model():
    from mscsa_lab.workflows.comparing import compare_action

    result = compare_action(["resnet18"], input_size=(32, 32), fps=True, limits=ResourceLimits(max_fps_seconds=1))
    note = next(n for n in result.table.notes if n.startswith("FPS:"))
    assert "at most 1 s per model" in note and result.table.metadata["fps_seconds_per_model"] == 1
    assert result.table.frame["FPS"].iloc[0] > 0


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


BUILD = dict(profile="resnet18", backbone="", task="classification", height=224, width=224, depth="", num_heads="",
             key_dim="", mlp_ratio="", squeeze="", use_pcp=True, use_intra_ffn=True, use_msp=True, downsample="dwconv",
             num_classes="1000", pretrained=False, weights=None)


@pytest.mark.slow
@pytest.mark.integration
def test_requests_that_would_exhaust_memory_are_refused_through_the_app(client):
    """The cases that used to pass 9 GB: each refused with its numbers, the process barely grows."""
    rss = _rss_mb()
    started = time.perf_counter()
    huge = {**BUILD, "depth": "24", "num_heads": "64", "key_dim": "512", "mlp_ratio": "16", "squeeze": "1/4"}
    with pytest.raises(Exception, match="G parameters, above this server's limit"):
        client.predict(*huge.values(), api_name="/build")
    with pytest.raises(Exception, match="G parameters, above this server's limit"):
        client.predict(*{**BUILD, "backbone": "convnext_xxlarge", "height": 256, "width": 256}.values(),
                       api_name="/build")
    with pytest.raises(Exception, match="input 4096x4096 is above this server's limit of 2048"):
        client.predict(*{**BUILD, "task": "dense", "height": 4096, "width": 4096}.values(), api_name="/build")
    with pytest.raises(Exception, match="batch 4096 is above this server's limit of 256"):
        client.predict(["pvt_v2_b0"], "cpu", "fp32", 4096, False, 1, 2, 224, "", False, 5, api_name="/benchmark")
    with pytest.raises(Exception, match="steps per timed block 1000000000 is above"):
        client.predict(["pvt_v2_b0"], "cpu", "fp32", 1, False, 10**9, 2, 224, "", False, 5, api_name="/benchmark")
    with pytest.raises(Exception, match="models to compare 9 is above this server's limit of 8"):
        client.predict(["resnet18"] * 9, 224, 224, "classification", "mac", False, False, api_name="/compare")
    with pytest.raises(Exception, match="epochs 1000 is above this server's limit of 100"):
        client.predict("synthetic", "", "resnet10t", "scratch", 1000, "", 8, 64, "", False, "", False, None,
                       api_name="/train")
    assert time.perf_counter() - started < 120
    assert _rss_mb() - rss < 500  # nothing was built
    assert "resnet18 + MSCSA" in client.predict(*BUILD.values(), api_name="/build")[1]  # still serving


@pytest.mark.slow
def test_training_is_refused_without_disk_and_stops_at_its_time_limit(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from webapp.context import AppContext
    from webapp.tabs.train import train_job

    fields = dict(data="synthetic", backbone="resnet10t", mode="scratch", epochs=50, batch_size=8, img_size=32,
                  synthetic_train=64, synthetic_val=16, workers=0, device="cpu")
    context = AppContext(runs_dir=tmp_path / "runs")
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10 * 2**20))
    with pytest.raises(ResourceError, match=r"writes about .* of checkpoints, but .* has 10.0 MiB free"):
        next(train_job(context, fields, "no-space"))
    monkeypatch.setattr(shutil, "disk_usage", real)
    started = time.perf_counter()
    *_, last = train_job(context, fields, "timed", max_minutes=0.05)  # 3 s for a run of 50 epochs
    assert "stopped" in last[0] and time.perf_counter() - started < 60
    assert (tmp_path / "runs" / "timed" / "last" / "state.pt").is_file()  # stopped cleanly: resumable
