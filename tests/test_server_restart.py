"""A training run survives a killed server: the app process is killed (SIGKILL, no clean-up) after the
run's first checkpoint, a new server starts on the same runs folder, and the run resumes from that
checkpoint and finishes; an existing run is never overwritten without asking."""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from gradio_client import Client

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TRAIN = dict(data="synthetic", profile="", backbone="resnet10t", mode="scratch", epochs=3, max_steps="", batch=32,
             img_size=32, lr="", pretrained=False)


def start_server(runs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return process, url
        except OSError:
            assert process.poll() is None, "the app did not start"
            time.sleep(1)
    process.kill()
    pytest.fail("the app did not answer within 180 s")


@pytest.mark.slow
@pytest.mark.integration
def test_training_resumes_after_the_server_is_killed(tmp_path):
    runs = tmp_path / "runs"
    state = runs / "restart-run" / "last" / "state.pt"
    server, url = start_server(runs)
    try:
        Client(url, verbose=False).submit(*TRAIN.values(), "restart-run", False, None, api_name="/train")
        deadline = time.monotonic() + 300
        while not state.is_file():
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.5)
        os.kill(server.pid, signal.SIGKILL)  # no clean-up, mid-epoch 2
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert (state.parent / "model.safetensors").is_file()  # the checkpoint is whole: written aside, then renamed

    server, url = start_server(runs)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="a run named 'restart-run' exists.*tick 'Resume'"):
            client.predict(*TRAIN.values(), "restart-run", False, None, api_name="/train")
        status = client.predict(*TRAIN.values(), "restart-run", True, None, api_name="/train")[0]
    finally:
        server.kill()
        server.wait(timeout=30)
    assert "restart-run** finished" in status and "after 186 steps" in status  # 3 epochs of 62 full batches of 32
    history = pd.read_csv(runs / "restart-run" / "history.csv")  # one row per logged step, across the restart
    assert list(history["step"]) == sorted(set(history["step"])) and history["step"].iloc[-1] == 186
    assert sorted(set(history["epoch"])) == [1, 2, 3]
