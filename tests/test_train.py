"""Training and evaluation (mscsa_lab.train, `python -m mscsa_lab train/evaluate`): tiny runs on the
synthetic shapes and on image folders written here, through the library, the command line and
torchrun with two CPU processes (gloo)."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_command
from mscsa_lab.io.checkpoints import load_trained, read_state_dict
from mscsa_lab.registry import create_mscsa_model
from mscsa_lab.train import TrainConfig, TrainingInputError, evaluate_trained, train
from mscsa_lab.train.data import scan_data

ROOT = Path(__file__).resolve().parent.parent
# The demo model's shape (resnet10t with halved widths + a small MSCSA): quick on two cores.
DEMO = dict(backbone="resnet10t", backbone_kwargs={"channels": [32, 64, 128, 256]},
            mscsa=dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0))
DEMO_CLI = ["--backbone", "resnet10t", "--backbone-arg", "channels=[32,64,128,256]", "--set", "pool_stride=8",
            "--set", "squeeze_ratio=0.25", "--set", "num_heads=4", "--set", "key_dim=16"]


def tiny(**changes) -> TrainConfig:
    values = dict(data="synthetic", img_size=64, batch_size=8, epochs=3, synthetic_train=24, synthetic_val=10,
                  workers=0, **DEMO)
    values.update(changes)
    return TrainConfig(**values)


def run_torchrun(*args, timeout=240):
    """``torchrun *args`` (``python -m torch.distributed.run``), one thread per process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def write_png_folder(root: Path, classes: dict[str, tuple[int, int, int]], count: int, seed: int = 0) -> None:
    """``count`` noisy PNGs per class (a colour each, some grey, some RGBA) under root/<class>/."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = (np.array(colour)[None, None] + rng.integers(-40, 40, (40 + 4 * i, 48, 3))).clip(0, 255)
            image = Image.fromarray(pixels.astype(np.uint8))
            if i % 3 == 1:
                image = image.convert("L")
            elif i % 3 == 2:
                image = image.convert("RGBA")
            image.save(folder / f"img_{i}.png")


COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


# ---------------------------------------------------------------------- library, synthetic shapes
def test_library_run_records_progress_writes_model_and_reloads(tmp_path):
    events = []
    out = tmp_path / "run"
    result = train(tiny(synthetic_train=40, epochs=3, augment=False, lr=3e-3, out=str(out)), callbacks=[events.append])

    assert result.status == "completed" and result.steps == 15 == result.total_steps
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(row["val_top1"] is not None for row in result.history)
    kinds = [e.kind for e in events if e.kind != "phase"]
    phases = [e.message.split(" (")[0] for e in events if e.kind == "phase"]
    assert phases[:3] == ["scanning the data", "building the model", "training"], phases
    assert phases.count("evaluating on 10 held-out images") == 3 and phases[-1].startswith("writing the run's files")
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3 and kinds.count("step") == 15
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 16))
    assert all(e.images_per_s > 0 and e.eta_s >= 0 and np.isfinite(e.loss) and 0 <= e.accuracy <= 100 for e in steps)
    assert steps[-1].eta_s == 0 and steps[-1].fraction == 1.0

    meta = json.loads((out / "model.json").read_text())
    for key in ("backbone", "backbone_kwargs", "mscsa", "task", "num_classes", "classes", "input_size",
                "preprocessing", "metrics", "training", "metadata", "command"):
        assert key in meta, key
    assert meta["classes"] == ["circle", "square", "triangle", "cross", "star"] and meta["num_classes"] == 5
    assert meta["input_size"] == [64, 64] and meta["mscsa"]["pool_stride"] == 8
    assert set(meta["preprocessing"]) >= {"mean", "std", "interpolation", "crop_pct"}
    assert meta["metrics"]["top1"] == pytest.approx(result.metrics["top1"]) and meta["metrics"]["images"] == 10
    assert meta["metadata"]["libraries"]["timm"] and meta["training"]["mode"] == "scratch"
    history = pd.read_csv(out / "history.csv")  # one row per logged step, held-out results at each epoch's end
    assert list(history["step"]) == list(range(1, 16)) and list(history["epoch"]) == [1] * 5 + [2] * 5 + [3] * 5
    assert list(history.dropna(subset=["val_top1"])["step"]) == [5, 10, 15]
    assert history["val_top1"].iloc[-1] == pytest.approx(result.history[-1]["val_top1"])

    model, loaded_meta = load_trained(out)
    assert loaded_meta["classes"] == meta["classes"] and not model.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)

    # Evaluating the folder again gives the metrics recorded at the end of training (same
    # held-out images, same preprocessing), and the files plain pandas reads.
    evaluation, paths = evaluate_trained(out, "synthetic")
    assert evaluation.top1 == pytest.approx(meta["metrics"]["top1"], abs=1e-3)
    assert evaluation.count == 10
    confusion = pd.read_csv(paths["confusion"], index_col=0)
    assert confusion.to_numpy().sum() == 10 and list(confusion.columns) == meta["classes"]
    assert paths["confusion_png"].stat().st_size > 1000


@pytest.mark.slow
def test_stop_flag_and_resume_continue_where_the_run_left_off(tmp_path):
    config = tiny(ema=True)  # 3 steps per epoch, 3 epochs; augmentation on; EMA state resumes too
    straight = train(config.replace(out=str(tmp_path / "straight")))

    # Stopped by a threading.Event after epoch 1, then resumed: epochs 2 and 3 follow.
    stop = threading.Event()
    first = train(config.replace(out=str(tmp_path / "a")), stop=stop,
                  callbacks=[lambda e: stop.set() if e.kind == "epoch" else None])
    assert first.status == "stopped" and first.steps == 3 and [r["epoch"] for r in first.history] == [1]
    assert (tmp_path / "a" / "last" / "state.pt").is_file() and (tmp_path / "a" / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary leftovers
    starts = []
    resumed = train(config.replace(out=str(tmp_path / "a"), resume=True),
                    callbacks=[lambda e: starts.append(e) if e.kind != "phase" else None])
    assert starts[0].kind == "start" and starts[0].step == 3 and starts[0].epoch == 1
    assert resumed.status == "completed" and resumed.steps == 9
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    expected = straight.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key

    # Stopped mid-epoch by a callable at step 4: resumes at that sample, same result again.
    stopped_at = []
    second = train(config.replace(out=str(tmp_path / "b")), stop=lambda: bool(stopped_at),
                   callbacks=[lambda e: stopped_at.append(e.step) if e.kind == "step" and e.step == 4 else None])
    assert second.status == "stopped" and second.steps == 4
    again = train(config.replace(out=str(tmp_path / "b"), resume=True))
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, expected[key]), key

    with pytest.raises(TrainingInputError, match="other settings"):
        train(config.replace(out=str(tmp_path / "a"), resume=True, img_size=96))
    with pytest.raises(TrainingInputError, match="nothing to resume"):
        train(config.replace(out=str(tmp_path / "empty"), resume=True))


def test_mscsa_only_trains_mscsa_and_head_and_leaves_the_backbone_alone():
    model = create_mscsa_model(None, num_classes=5, backbone=DEMO["backbone"], backbone_kwargs=DEMO["backbone_kwargs"],
                               **DEMO["mscsa"])
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    mscsa_before = {k: v.clone() for k, v in model.mscsa.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    result = train(tiny(mode="mscsa-only", max_steps=4, amp="bf16"), model=model)  # the CPU's bf16 autocast
    assert result.steps == 4 and result.model is model and np.isfinite(result.metrics["loss"])
    for key, value in model.backbone.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, backbone_before[key]), key
    assert any(not torch.equal(v, mscsa_before[k]) for k, v in model.mscsa.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert all(not p.requires_grad for p in model.backbone.parameters())


# ---------------------------------------------------------------------- image folders, bad inputs
def test_single_folder_is_split_per_class_and_trains(tmp_path):
    write_png_folder(tmp_path / "shapes", COLOURS, count=5)
    source = scan_data(str(tmp_path / "shapes"), val_fraction=0.4, seed=3)
    assert source.classes == ["blue", "green", "red"] and source.kind == "split"
    assert source.train_count == 9 and source.val_count == 6  # 2 of 5 held out per class
    held = sorted(source.val.indices)
    assert held == sorted(scan_data(str(tmp_path / "shapes"), val_fraction=0.4, seed=3).val.indices)
    assert held != sorted(scan_data(str(tmp_path / "shapes"), val_fraction=0.4, seed=4).val.indices)
    targets = [source.val.dataset.targets[i] for i in held]
    assert sorted(set(targets)) == [0, 1, 2]

    result = train(tiny(data=str(tmp_path / "shapes"), batch_size=4, max_steps=2, val_fraction=0.4, seed=3,
                        out=str(tmp_path / "run")))
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert result.status == "max_steps" and meta["classes"] == ["blue", "green", "red"]
    assert meta["training"]["data"]["val_images"] == 6 and meta["metrics"]["images"] == 6


def test_bad_inputs_give_clear_messages(tmp_path):
    with pytest.raises(TrainingInputError, match="does not exist"):
        train(tiny(data=str(tmp_path / "missing")))
    write_png_folder(tmp_path / "one", {"cats": (120, 80, 40)}, count=3)
    with pytest.raises(TrainingInputError, match="one class .*'cats'.* at least two"):
        train(tiny(data=str(tmp_path / "one")))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(TrainingInputError, match="no class sub-folders .*1 images lie directly"):
        train(tiny(data=str(loose)))
    with pytest.raises(TrainingInputError, match="batch size must be at least 1, got 0"):
        train(tiny(batch_size=0))
    with pytest.raises(TrainingInputError, match="fewer than one batch of 64"):
        train(tiny(batch_size=32, accum_steps=2))
    with pytest.raises(TrainingInputError, match="max steps must be at least 1"):
        train(tiny(max_steps=0))
    with pytest.raises(TrainingInputError, match="fp16 autocast needs a CUDA GPU"):
        train(tiny(amp="fp16", device="cpu"))
    with pytest.raises(TrainingInputError, match="scratch"):
        train(tiny(mode="scratch", pretrained=True))


@pytest.mark.slow
def test_cli_trains_and_evaluates_an_image_folder(tmp_path):
    data = tmp_path / "photos"
    write_png_folder(data / "train", COLOURS, count=6)
    write_png_folder(data / "val", COLOURS, count=2, seed=1)
    out = tmp_path / "run"
    trained = run_command("train", "--data", str(data), *DEMO_CLI, "--img-size", "64", "--batch", "6", "--max-steps",
                          "4", "--epochs", "2", "--workers", "0", "--no-progress", "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    assert "max_steps: 4/4 steps" in trained.stderr and "epoch 1/2" in trained.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["training"]["steps"] == 4
    assert meta["command"].startswith("mscsa-lab train --data")
    assert (out / "model.safetensors").is_file() and (out / "last" / "model.safetensors").is_file()

    evaluated = run_command("evaluate", str(out), "--data", str(data))
    assert evaluated.returncode == 0, evaluated.stderr
    eval_dir = out / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["top1"] == pytest.approx(meta["metrics"]["top1"], abs=1e-3)
    per_class = pd.read_csv(eval_dir / "per_class.csv")
    assert list(per_class["class"]) == ["blue", "green", "red"] and per_class["images"].tolist() == [2, 2, 2]
    confusion = pd.read_csv(eval_dir / "confusion.csv")
    assert list(confusion.columns[1:]) == ["blue", "green", "red"]
    assert confusion.iloc[:, 1:].to_numpy().sum() == 6
    assert (eval_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    missing = run_command("train", "--data", str(tmp_path / "nope"), "--backbone", "resnet10t", "--out",
                          str(tmp_path / "x"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------------- two processes (torchrun, gloo)
@pytest.mark.integration
def test_torchrun_two_cpu_processes_match_one_process_with_the_same_micro_batches(tmp_path):
    """2 processes x batch 4 (plain DDP: each process's BatchNorm sees its 4 images; SyncBatchNorm
    is CUDA-only) equal 1 process x batch 4 x accum_steps 2, whose micro-batches are the same
    4-image halves of each global batch of 8. Deterministic inputs (no augmentation), SGD."""
    common = ["--data", "synthetic", *DEMO_CLI, "--img-size", "64", "--batch", "4", "--epochs", "2",
              "--synthetic-train", "16", "--synthetic-val", "8", "--opt", "sgd", "--lr", "0.05", "--no-augment",
              "--workers", "0", "--no-progress"]
    out = tmp_path / "ddp"
    ran = run_torchrun("--standalone", "--nproc_per_node", "2", "-m", "mscsa_lab", "train", *common, "--out", str(out))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stderr.count("completed: 4/4 steps") == 1  # only rank 0 reports
    assert "2 processes" in ran.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["training"]["global_batch"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "last", "model.json", "model.safetensors"]
    distributed = read_state_dict(out / "model.safetensors")

    config = TrainConfig(data="synthetic", img_size=64, batch_size=4, accum_steps=2, epochs=2, synthetic_train=16,
                         synthetic_val=8, opt="sgd", lr=0.05, augment=False, workers=0, **DEMO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order as the OMP_NUM_THREADS=1 processes
    try:
        single = train(config)
        whole_batch = train(config.replace(batch_size=8, accum_steps=1))
    finally:
        torch.set_num_threads(threads)
    names = [name for name, _ in single.model.named_parameters()]
    reference = single.model.state_dict()
    worst = max((reference[n] - distributed[n]).abs().max().item() for n in names)
    assert worst <= 1e-5, worst
    # Without the matching micro-batches (BatchNorm over all 8 images) the weights differ clearly.
    other = whole_batch.model.state_dict()
    assert max((other[n] - distributed[n]).abs().max().item() for n in names) > 1e-3
