"""Soak: 24 mixed requests from 4 concurrent clients on 127.0.0.1 with no failure, and the app's memory
after warm-up measured over 30 saliency renders (target: under 40 MB of growth). Figures are printed.
The long soak (an hour of load, memory after idle against the start) is ``benchmarks/memory_soak.py``."""
import gc
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))
BUILD = ("resnet18", "resnet10t", "classification", 64, 64, "", "", "", "", "", True, True, True, "dwconv", "1000",
         False, None)
CLIENTS = 4
REQUESTS = 24
RENDERS = 30
TIME_LIMIT_S = 600


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _saliency(client: Client, index: int):
    sample = SAMPLES[index % len(SAMPLES)]
    method = ("gradcam", "norm", "attention")[index % 3]
    return client.predict(handle_file(str(sample)), method, ["key"], 0, 1 + index % 2, "top-1", "pad", "demo", None,
                          api_name="/saliency")


def _request(client: Client, index: int) -> None:
    """A mix a user session makes: mostly saliency, with builds, profiles, comparisons and a bad input."""
    kind = index % 10
    if kind < 6:
        _saliency(client, index)
    elif kind == 6:
        client.predict(*BUILD, api_name="/build")
    elif kind == 7:
        client.predict(*BUILD, api_name="/build")
        client.predict("mac", 0, False, 1, False, api_name="/profile")
    elif kind == 8:
        client.predict(["resnet18"], 64, 64, "classification", "mac", False, False, api_name="/compare")
    else:
        try:
            client.predict(*BUILD[:5], "99", *BUILD[6:], api_name="/build")
        except Exception as error:  # noqa: BLE001 - the expected message is the success here
            assert "depth=99 is out of range" in str(error)
            return
        raise AssertionError("a bad depth was accepted")


@pytest.mark.slow
@pytest.mark.integration
def test_soak_of_mixed_concurrent_requests_and_memory_growth(app_url):
    clients = [Client(app_url, verbose=False) for _ in range(CLIENTS)]
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def worker(number: int) -> None:
        for index in range(number, REQUESTS, CLIENTS):
            if time.perf_counter() - started > TIME_LIMIT_S:
                failures.append(f"request {index}: not started within {TIME_LIMIT_S} s")
                return
            try:
                _request(clients[number], index)
                with lock:
                    done[0] += 1
            except Exception as error:  # noqa: BLE001 - counted and reported
                failures.append(f"request {index}: {str(error)[:200]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    soak_s = time.perf_counter() - started

    # Memory: warm up, then RENDERS saliency renders from one client; growth of the process (the app runs in it).
    for index in range(6):
        _saliency(clients[0], index)
    gc.collect()
    before = _rss_mb()
    for index in range(RENDERS):
        _saliency(clients[0], index)
    gc.collect()
    growth = _rss_mb() - before
    print(f"\nsoak: {done[0]}/{REQUESTS} requests from {CLIENTS} clients in {soak_s:.0f} s, {len(failures)} failures; "
          f"memory growth over {RENDERS} saliency renders after warm-up: {growth:.1f} MB (RSS {before:.0f} MB before)")
    assert not failures, failures[:5]
    assert done[0] == REQUESTS
    assert growth < 40
