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
EPOCHS, STEPS_PER_EPOCH, BATCH = 3, 12, 8


def small_folder(root: Path) -> Path:
    """train/ and val/ of three classes of coloured squares: epochs of seconds, so the test waits on the
    server, not on training (12 steps of 8 images per epoch)."""
    from PIL import Image

    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for split, count in (("train", STEPS_PER_EPOCH * BATCH // 3), ("val", 4)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                image = Image.new("RGB", (32, 32), (index * 7 % 255, 90, 90))
                image.paste(colour, (index % 16, index % 16, index % 16 + 16, index % 16 + 16))
                image.save(folder / f"{index}.png")
    return root


def train_form(data: Path) -> tuple:
    return (str(data), "", "resnet10t", "scratch", EPOCHS, "", BATCH, 32, "", False)


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
    form = train_form(small_folder(tmp_path / "data"))
    state = runs / "restart-run" / "last" / "state.pt"
    server, url = start_server(runs)
    try:
        Client(url, verbose=False).submit(*form, "restart-run", False, None, api_name="/train")
        deadline = time.monotonic() + 300
        while not state.is_file():
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # no clean-up, in epoch 2
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert (state.parent / "model.safetensors").is_file()  # the checkpoint is whole: written aside, then renamed
    assert not (runs / "restart-run" / "model.safetensors").is_file()  # killed before the run finished

    server, url = start_server(runs)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="a run named 'restart-run' exists.*tick 'Resume'"):
            client.predict(*form, "restart-run", False, None, api_name="/train")
        status = client.predict(*form, "restart-run", True, None, api_name="/train")[0]
    finally:
        server.kill()
        server.wait(timeout=30)
    total = EPOCHS * STEPS_PER_EPOCH
    assert "restart-run** finished" in status and f"after {total} steps" in status
    history = pd.read_csv(runs / "restart-run" / "history.csv")  # one row per logged step, across the restart
    assert list(history["step"]) == sorted(set(history["step"])) and history["step"].iloc[-1] == total
    assert sorted(set(history["epoch"])) == [1, 2, 3]
