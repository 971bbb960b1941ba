"""Concurrency and cancellation against the running app: a cancelled benchmark stops using the CPU
within seconds, requests never share a mutable model, and the model cache is bounded by memory."""
import time

import pytest
from gradio_client import Client
from gradio_client.utils import Status

# PVTv2-B0, CPU, fp32, batch 8, no fast path, 20 steps a block, 200 rounds, 224, Build model unused, 600 s cap.
LONG_BENCHMARK = (["pvt_v2_b0"], "cpu", "fp32", 8, False, 20, 200, 224, "", False, 600)


def _process_cpu_share(seconds: float) -> float:
    """Cores this process used on average over ``seconds`` (all its threads: the app runs in it)."""
    start_cpu, start = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - start_cpu) / (time.perf_counter() - start)


@pytest.mark.slow
@pytest.mark.integration
def test_cancelling_a_benchmark_stops_the_work(app_url):
    client = Client(app_url, verbose=False)
    job = client.submit(*LONG_BENCHMARK, api_name="/benchmark")
    deadline = time.monotonic() + 120
    while _process_cpu_share(1.0) < 0.5:  # wait until it is really timing
        assert time.monotonic() < deadline, "the benchmark never started"
        assert not job.done(), f"the benchmark ended early: {job.exception() or job.outputs()}"
    busy = _process_cpu_share(1.0)
    job.cancel()
    shares = _until_idle()
    print(f"\nCPU while benchmarking {busy:.2f} cores, after cancel {shares} cores (every 2 s)")
    assert busy > 0.5 and shares[-1] < 0.25, shares


def _until_idle(samples: int = 10) -> list[float]:
    """The process's CPU every 2 s after a cancel until it is idle (at most ``samples`` readings): the work
    ends within one timed block (20 forward passes), which takes longer on a loaded machine."""
    shares: list[float] = []
    while len(shares) < samples and (not shares or shares[-1] >= 0.25):
        shares.append(_process_cpu_share(2.0))
    return shares


RUNNING = (Status.PROCESSING, Status.PROGRESS)


def _wait_for(job, codes: tuple[Status, ...], seconds: float):
    deadline = time.monotonic() + seconds
    while (status := job.status()).code not in codes:
        assert time.monotonic() < deadline, f"still {status.code} after {seconds} s, expected {codes}"
        assert not job.done(), f"the job ended: {job.exception() or job.outputs()}"
        time.sleep(0.2)
    return status


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_benchmark_waits_in_the_queue_with_its_position(app_url):
    """Benchmarks run one at a time (they would time each other): a second one queues, its client is
    told its place in line (what the page shows as 'queue: 1/1'), and it starts when the first is
    cancelled."""
    first = Client(app_url, verbose=False).submit(*LONG_BENCHMARK, api_name="/benchmark")
    second = Client(app_url, verbose=False).submit(*LONG_BENCHMARK, api_name="/benchmark")
    try:
        _wait_for(first, RUNNING, 120)
        waiting = _wait_for(second, (Status.IN_QUEUE,), 60)
        assert waiting.rank == 0 and waiting.queue_size >= 1  # first in line (the page counts from 1)
        time.sleep(2)
        assert second.status().code == Status.IN_QUEUE  # still waiting while the first one runs
        first.cancel()
        _wait_for(second, RUNNING, 60)
    finally:
        first.cancel()
        second.cancel()
    shares = _until_idle()  # both stopped
    assert shares[-1] < 0.25, shares


def test_an_abandoned_job_is_stopped_by_the_watchdog():
    """A request whose generator is left suspended and never closed (a cancel Gradio could not
    deliver) stops its work once nobody has asked for an update for ``orphan_s`` seconds."""
    import threading

    from webapp.actions import cancellable

    started, stopped = threading.Event(), threading.Event()

    def work(stop, report):
        started.set()
        while not stop.wait(0.05):
            report(0.5, "working")
        stopped.set()
        return "done"

    job = cancellable(work, lambda fraction, desc=None: None, poll_s=0.1, orphan_s=1.0)
    assert next(job) is None and not started.is_set()  # nothing runs before Gradio holds the generator
    assert next(job) is None and started.wait(5)
    assert not stopped.wait(0.5)  # still wanted: still running
    assert stopped.wait(5)  # abandoned (job kept, never advanced or closed): stopped by the watchdog
    del job


def test_model_cache_is_bounded_by_memory_not_count():
    from torch import nn

    from mscsa_lab.workflows.store import ModelCache, model_bytes

    small = lambda: nn.Linear(256, 256)  # noqa: E731 - 257 KiB each
    big = lambda: nn.Linear(1024, 1024)  # noqa: E731 - 4 MiB
    cache = ModelCache(budget_bytes=3 * model_bytes(small()) + 100)
    first = cache.get("a", small)
    assert cache.get("a", small) is first  # kept
    cache.get("b", small), cache.get("c", small)
    cache.get("a", small)  # a is now the most recent
    cache.get("d", small)  # over budget: b (least recently used) goes
    assert "b" not in cache and all(key in cache for key in "acd") and cache.used_bytes <= cache.budget_bytes
    huge = cache.get("huge", big)  # larger than the whole budget: built, not kept, nothing evicted for it
    assert isinstance(huge, nn.Linear) and "huge" not in cache and len(cache) == 3
    assert model_bytes((huge, {"meta": 1})) == 4 * (1024 * 1024 + 1024)


def test_app_flag_sets_the_cache_budget(run_app_main):
    context = run_app_main(["--cache-mb", "64"])["context"]
    assert context.store.cache.budget_bytes == 64 * 2**20
