"""The ablation-study runner: variants x seeds trained on the synthetic shapes, tabulated with
FLOPs (as ablation_flops counts them), an FPS ratio and top-1 mean/std, through the library and
the command line."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_command
from mscsa_lab.analysis.ablation import ablation_flops
from mscsa_lab.bench.settings import BenchmarkSettings
from mscsa_lab.train import TrainingInputError
from mscsa_lab.train.ablation import DEMO_BACKBONE, DEMO_BACKBONE_KWARGS, DEMO_MSCSA, resolve_variants, run_ablation

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(max_steps=2, batch_size=4, img_size=64, synthetic_train=16, synthetic_val=8, workers=0, device="cpu")
FAST_FPS = BenchmarkSettings(device="cpu", batch=2, warmup=1, steps=1, repeats=3)
VARIANTS = ["none", "+msp"]


def _demo_flops(variants):
    return ablation_flops(DEMO_BACKBONE, variants, (64, 64), backbone_kwargs=dict(DEMO_BACKBONE_KWARGS),
                          **DEMO_MSCSA).frame.set_index("Variant")


@pytest.mark.slow
def test_library_two_variants_two_seeds(tmp_path):
    messages = []
    table = run_ablation("demo", VARIANTS, seeds=(0, 1), train=TINY, input_size=64, fps_settings=FAST_FPS,
                         out=tmp_path / "runs", progress=lambda f, m: messages.append((f, m)))
    frame = table.frame
    assert list(frame["Variant"]) == VARIANTS and (frame["n"] == 2).all()
    for column in ("Top-1 mean (%)", "Top-1 std", "FPS ratio", "Images/s", "FLOPs (M)", "Params (M)"):
        assert frame[column].map(math.isfinite).all(), column
    assert frame["FPS ratio"].iloc[0] == pytest.approx(1.0)
    expected = _demo_flops(VARIANTS)
    assert list(frame["FLOPs (M)"]) == pytest.approx(list(expected["FLOPs (M)"]))
    assert list(frame["Params (M)"]) == pytest.approx(list(expected["Params (M)"]))
    assert table.metadata["seeds"] == [0, 1] and "synthetic" in table.metadata["data"]
    assert len(table.metadata["runs"]) == 4 and table.metadata["training"]["max_steps"] == 2
    assert any("not a finding" in note for note in table.notes)
    assert messages and messages[-1][0] == 1.0
    assert (tmp_path / "runs" / "01-msp" / "seed1" / "model.safetensors").is_file()
    csv = tmp_path / "study.csv"
    table.write(csv)
    back = pd.read_csv(csv)
    assert list(back["Variant"]) == VARIANTS and (back["n"] == 2).all()


@pytest.mark.slow
def test_cli_study_without_fps(tmp_path):
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    done = run_command(
        "ablate", "demo", "--variant", "none", "--variant", "+pcp", "--seeds", "0", "1", "--max-steps", "2", "--batch",
        "4", "--img-size", "64", "--input", "64", "--synthetic-train", "16", "--synthetic-val", "8", "--workers", "0",
        "--device", "cpu", "--no-fps", "-o", str(csv), "-o", str(md))
    assert done.returncode == 0, done.stderr
    assert "run 4/4: +pcp, seed 1" in done.stderr
    assert re.search(r"^\+pcp\s", done.stdout, re.MULTILINE) and "| +pcp |" in md.read_text()
    frame = pd.read_csv(csv)
    assert list(frame["Variant"]) == ["none", "+pcp"] and (frame["n"] == 2).all()
    assert "FPS ratio" not in frame.columns
    assert frame["Top-1 mean (%)"].map(math.isfinite).all() and frame["Top-1 std"].map(math.isfinite).all()
    assert list(frame["FLOPs (M)"]) == pytest.approx(list(_demo_flops(["none", "+pcp"])["FLOPs (M)"]), abs=1e-3)
    assert md.read_text().startswith("### Ablation study of demo")


@pytest.mark.slow
def test_cli_flops_only_gives_the_paper_table_without_training(tmp_path):
    """`ablate --flops-only`: the Table 5 cost columns in seconds, the paper beside, no run trained."""
    csv = tmp_path / "table5.csv"
    done = run_command("ablate", "topformer_tiny", "--table", "5", "--flops-only", "--out", str(tmp_path / "runs"),
                       "-o", str(csv))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^avgpool\s", done.stdout, re.MULTILINE) and "run 1/" not in done.stderr
    assert not (tmp_path / "runs").exists()
    frame = pd.read_csv(csv).set_index("Variant")
    assert list(frame.index) == ["dwconv", "avgpool", "cascade", "single"]
    assert list(frame["Paper FLOPs (M)"]) == [132, 132, 131, 131]
    expected = ablation_flops("topformer_tiny", list(frame.index)).frame.set_index("Variant")
    assert list(frame["FLOPs (M)"]) == pytest.approx(list(expected["FLOPs (M)"]), abs=1e-3)
    # Each variant's change against dwconv agrees with the paper's within 1 M.
    ours = frame["FLOPs (M)"] - frame.loc["dwconv", "FLOPs (M)"]
    paper = frame["Paper FLOPs (M)"] - frame.loc["dwconv", "Paper FLOPs (M)"]
    assert (ours - paper).abs().max() <= 1.0


def test_bad_requests_give_clear_errors():
    with pytest.raises(ValueError, match=r"unknown ablation variant\(s\) \['\+bogus'\]"):
        run_ablation("demo", ["none", "+bogus"], seeds=(0,), train=TINY, input_size=64)
    with pytest.raises(ValueError, match="seeds repeat"):
        run_ablation("demo", VARIANTS, seeds=(0, 0), train=TINY)
    with pytest.raises(TrainingInputError, match="unknown training setting"):
        run_ablation("demo", VARIANTS, seeds=(0,), train={"max_stepz": 2})
    with pytest.raises(TrainingInputError, match="sets \\['seed'\\] itself"):
        run_ablation("demo", VARIANTS, seeds=(0,), train={"seed": 3})
    assert list(resolve_variants("5")) == ["dwconv", "avgpool", "cascade", "single"]
    done = run_command("ablate", "demo", "--variant", "nope")
    assert done.returncode == 2 and "unknown ablation variant(s) ['nope']" in done.stderr


@pytest.mark.slow
def test_cli_ctrl_c_stops_the_study_and_still_writes_the_table(tmp_path):
    """Ctrl-C once during a long study: the current run stops, the command exits 0 and writes the table
    of the runs that finished (none here), marked as stopped."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    csv = tmp_path / "t.csv"
    process = subprocess.Popen(
        [sys.executable, "-m", "mscsa_lab", "ablate", "demo", "--variant", "none", "--variant", "+pcp", "--seeds", "0",
         "--max-steps", "100000", "--batch", "4", "--img-size", "64", "--input", "64", "--synthetic-train", "16",
         "--synthetic-val", "8", "--workers", "0", "--device", "cpu", "--no-fps", "-o", str(csv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "run 1/2" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        assert "run 1/2" in line
        time.sleep(3)  # inside the first run's steps
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "stopping after this training step" in stderr and "Traceback" not in stderr
    assert "stopped: the table holds the runs that finished" in stdout and "note: Stopped early" in stderr
    frame = pd.read_csv(csv)
    assert list(frame["Variant"]) == ["none", "+pcp"] and (frame["n"] == 0).all()
