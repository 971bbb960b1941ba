"""The app's memory under a long mixed load, and after it: does it come back near where it started?

    python benchmarks/memory_soak.py --minutes 10 --clients 4

Starts the app as its own process on a free local port (runs in a temporary folder), records its resident
memory once it serves, then sends mixed requests (builds and profiles of several models, saliency maps,
comparisons, bad inputs) from ``--clients`` clients for ``--minutes``, samples the memory every second,
then lets it sit idle and prints: memory at start, the peak, memory after 20 s idle (the model store
keeps up to ``--cache-mb`` of weights by design; the rest should be handed back), and memory once the app
has let its cached models go (its ``--cache-idle-s``, here ``--release-s``; 600 s by default in the app).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))
MODELS = ("resnet18", "pvt_v2_b0", "resnet10t", "convnext_tiny", "topformer_tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


PROFILE_NAMES = ("resnet18", "pvt_v2_b0", "convnext_tiny", "topformer_tiny")  # the rest are timm backbones


def build_args(name: str, size: int) -> tuple:
    """The Build form: a Table 7 profile in the profile field; any other timm name in the backbone field, which
    then takes the place of the (always chosen) profile's backbone."""
    profile, backbone = (name, "") if name in PROFILE_NAMES else (PROFILE_NAMES[0], name)
    return (profile, backbone, "classification", size, size, "", "", "", "", "", True, True, True, "dwconv", "1000",
            False, None)


def request(client, index: int) -> None:
    from gradio_client import handle_file

    kind, name = index % 6, MODELS[index % len(MODELS)]
    size = 224 if index % 3 else 128
    if kind in (0, 1):
        client.predict(*build_args(name, size), api_name="/build")
        client.predict("mac", 1, index % 4 == 0, 2, False, api_name="/profile")
    elif kind in (2, 3):
        source = "demo" if kind == 2 else "build"
        client.predict(handle_file(str(SAMPLES[index % len(SAMPLES)])), "gradxact", ["key", "value"], 0, 1, "top-1",
                       "pad", source, None, api_name="/saliency")
    elif kind == 4:
        profile = name if name in PROFILE_NAMES else PROFILE_NAMES[index % len(PROFILE_NAMES)]  # its list: profiles
        client.predict([profile], size, size, "classification", "mac", False, False, api_name="/compare")
    else:
        try:
            client.predict(*build_args("no_such_net", size), api_name="/build")
        except Exception:  # noqa: BLE001 - the bad input is the point
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (default: 10)")
    parser.add_argument("--clients", type=int, default=4, help="clients sending requests at once (default: 4)")
    parser.add_argument("--cache-mb", type=int, default=2048, help="the app's model store (default: 2048 MiB)")
    parser.add_argument("--release-s", type=float, default=60.0,
                        help="the app's --cache-idle-s: idle seconds before it lets its cached models go (default: 60)")
    args = parser.parse_args()
    from gradio_client import Client

    port = free_port()
    runs = tempfile.mkdtemp(prefix="mscsa_soak_runs_")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", runs, "--cache-mb",
                               str(args.cache_mb), "--cache-idle-s", str(args.release_s)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the app did not start")
                time.sleep(1)
        time.sleep(3)
        start = rss_mb(server.pid)
        samples, stop, counts = [start], threading.Event(), {"done": 0, "failed": 0}
        failures: list[str] = []

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append(rss_mb(server.pid))

        def work(number: int) -> None:
            client, index = Client(url, verbose=False), number
            while not stop.is_set():
                try:
                    request(client, index)
                    counts["done"] += 1
                except Exception as error:  # noqa: BLE001 - counted, and its message kept
                    counts["failed"] += 1
                    failures.append(str(error).splitlines()[0][:160] if str(error) else type(error).__name__)
                index += args.clients

        threads = [threading.Thread(target=sample)] + [threading.Thread(target=work, args=(n,))
                                                       for n in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.minutes * 60)
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
        time.sleep(20)  # idle: the app collects and hands memory back after 5 s without requests
        idle = rss_mb(server.pid)
        time.sleep(max(0.0, args.release_s - 20) + 15)
        released = rss_mb(server.pid)
        print(f"{counts['done']} requests ({counts['failed']} failed) from {args.clients} clients in "
              f"{args.minutes:g} min; model store {args.cache_mb} MiB")
        for message in sorted(set(failures)):
            print(f"  failed ({failures.count(message)}x): {message}")
        print(f"resident memory: start {start:.0f} MiB, peak {max(samples):.0f} MiB, after 20 s idle {idle:.0f} MiB "
              f"({idle - start:+.0f} MiB, {idle / start:.2f}x the start); after {args.release_s:g} s idle (cached "
              f"models let go) {released:.0f} MiB ({released - start:+.0f} MiB, {released / start:.2f}x the start)")
    finally:
        server.kill()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
