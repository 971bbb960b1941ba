"""Distillation (mode 'distill'): a plain timm backbone trained here on the synthetic shapes and
saved as a weights file is the teacher; MSCSA and its head learn to reproduce it on folders of
images without labels. Also the teacher's class names, the crop options, the per-step history
and the BatchNorm statistics of a two-process run."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import timm
import torch

from conftest import run_command
from mscsa_lab.data.shapes_dataset import write_shapes_folder
from mscsa_lab.data.synthetic import CLASSES, make_sample
from mscsa_lab.io.checkpoints import load_trained, read_state_dict
from mscsa_lab.models.backbones import PretrainedWeightsUnavailable
from mscsa_lab.train import TrainConfig, TrainingInputError, evaluate_trained, train
from mscsa_lab.train.data import build_transforms, data_config_for, scan_data, scan_images
from mscsa_lab.train.distill import TeacherOutputs, distillation_loss
from mscsa_lab.train.parts import augmentation_settings
from mscsa_lab.train.teacher import imagenet_class_names, load_teacher, read_class_names, teacher_class_count

ROOT = Path(__file__).resolve().parent.parent
NARROW = {"channels": [32, 64, 128, 256]}
SMALL_MSCSA = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0)


def save_timm(path: Path, num_classes: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=num_classes, **kwargs)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


# ---------------------------------------------------------------------- fast: names, folders, options
def test_class_names_from_json_files_and_imagenet(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["a", "b", "c"]))
    (tmp_path / "dict.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    (tmp_path / "hub.json").write_text(json.dumps({"architecture": "x", "label_names": ["a", "b", "c"]}))
    for name in ("list", "dict", "hub"):
        assert read_class_names(tmp_path / f"{name}.json", 3) == ["a", "b", "c"]
    with pytest.raises(TrainingInputError, match="names 3 classes but the teacher's classifier has 5"):
        read_class_names(tmp_path / "list.json", 5)
    (tmp_path / "twice.json").write_text(json.dumps(["a", "a"]))
    with pytest.raises(TrainingInputError, match="twice"):
        read_class_names(tmp_path / "twice.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TrainingInputError, match="not readable JSON"):
        read_class_names(tmp_path / "bad.json")

    names = imagenet_class_names()
    assert len(names) == len(set(names)) == 1000 and names[281] == "tabby, tabby cat"


def test_teacher_from_a_weights_file_takes_its_classes_from_the_json_beside_it(tmp_path):
    weights = tmp_path / "shapes_teacher.safetensors"
    model = save_timm(weights, 5, **NARROW)
    teacher = load_teacher("resnet10t", pretrained_file=str(weights), backbone_kwargs=NARROW)
    assert teacher.classes == [f"class {i}" for i in range(5)] and teacher.classes_source == "generic"
    assert teacher.notes and "classes.json" in teacher.notes[0]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), model.eval()(x), atol=1e-5)

    (tmp_path / "classes.json").write_text(json.dumps(list(CLASSES)))
    assert load_teacher("resnet10t", pretrained_file=str(weights), backbone_kwargs=NARROW).classes == list(CLASSES)
    (tmp_path / "shapes_teacher.json").write_text(json.dumps({"classes": list("vwxyz")}))  # <stem>.json comes first
    assert load_teacher("resnet10t", pretrained_file=str(weights), backbone_kwargs=NARROW).classes == list("vwxyz")

    imagenet = tmp_path / "in1k" / "resnet10t.safetensors"
    imagenet.parent.mkdir()
    save_timm(imagenet, 1000)
    teacher = load_teacher("resnet10t", pretrained_file=str(imagenet))
    assert teacher.classes_source == "imagenet-1k" and teacher.classes[281] == "tabby, tabby cat"

    headless = tmp_path / "headless.safetensors"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    safetensors.torch.save_file(state, str(headless))
    with pytest.raises(TrainingInputError, match="no classifier .*fc.weight.*head included"):
        load_teacher("resnet10t", pretrained_file=str(headless), backbone_kwargs=NARROW)
    with pytest.raises(TrainingInputError, match="does not fit timm's 'resnet10t'"):
        load_teacher("resnet10t", pretrained_file=str(weights))  # saved with narrow channels


def test_distill_needs_a_trained_teacher_and_fails_fast_offline(tmp_path, monkeypatch):
    with pytest.raises(TrainingInputError, match="mode 'distill' explains a trained backbone"):
        TrainConfig(mode="distill", backbone="resnet10t").validate()
    with pytest.raises(TrainingInputError, match="teacher classes .* mode 'distill'"):
        TrainConfig(backbone="resnet10t", teacher_classes=str(tmp_path / "x.json")).validate()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch"))
    with pytest.raises(PretrainedWeightsUnavailable, match="HF_HUB_OFFLINE"):
        load_teacher("resnet10t", pretrained=True)


def test_a_flat_folder_of_unlabelled_images_is_split_and_read(tmp_path):
    write_shapes_folder(tmp_path / "photos", 10, 40, flat=True)
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"not an image")
    source = scan_images(str(tmp_path / "photos"), val_fraction=0.2, seed=1)
    assert (source.train_count, source.val_count, source.classes) == (8, 2, [])
    assert set(source.train.files).isdisjoint(source.val.files)
    image, target = source.train[0]
    assert image.size == (40, 40) and target == 0
    with pytest.raises(TrainingInputError, match="has no class sub-folders .*10 images lie directly"):
        scan_data(str(tmp_path / "photos"))  # labelled training says what is missing
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingInputError, match="no images in"):
        scan_images(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(TrainingInputError, match="a.jpg.* cannot be read"):
        scan_images(str(broken)).train[0]


def test_crop_scale_ratio_and_flip_reach_the_transforms(tmp_path):
    write_shapes_folder(tmp_path / "data", 12, 40)
    source = scan_data(str(tmp_path / "data"))
    small = augmentation_settings(TrainConfig(data=str(tmp_path / "data"), backbone="resnet10t", img_size=64), source)
    assert small["scale"] == [0.5, 1.0] and small["hflip"] == 0.5  # small images keep small objects in the crop
    large = augmentation_settings(TrainConfig(data=str(tmp_path / "data"), backbone="resnet10t", img_size=224), source)
    assert large["scale"] == [0.08, 1.0]  # timm's own at ImageNet size
    asked = augmentation_settings(TrainConfig(data=str(tmp_path / "data"), backbone="resnet10t", img_size=64,
                                              scale=(0.3, 0.9), ratio=(0.9, 1.1), hflip=0.0), source)
    transform, _ = build_transforms(data_config_for("resnet10t", 64), True, asked["scale"], asked["hflip"], 0.0, None,
                                    asked["ratio"])
    crop = transform.transforms[0]
    assert crop.scale == (0.3, 0.9) and crop.ratio == (0.9, 1.1)
    flips = lambda t: [s.p for s in t.transforms if type(s).__name__ == "RandomHorizontalFlip"]  # noqa: E731
    assert flips(transform) == []  # hflip 0: no flip at all
    default, _ = build_transforms(data_config_for("resnet10t", 64), True, small["scale"], small["hflip"], 0.0, None,
                                  small["ratio"])
    assert flips(default) == [0.5] and default.transforms[0].scale == (0.5, 1.0)
    with pytest.raises(TrainingInputError, match="scale must be two numbers"):
        TrainConfig(backbone="resnet10t", scale=(0.5, 1.5)).validate()


def test_distillation_loss_and_the_shared_backbone_pass(tmp_path):
    logits = torch.randn(4, 7)
    assert distillation_loss(logits, logits, 2.0).abs().item() < 1e-6
    assert distillation_loss(torch.randn(4, 7), logits, 2.0).item() > 0
    weights = tmp_path / "t.safetensors"
    save_timm(weights, 5, **NARROW)
    teacher = load_teacher("resnet10t", pretrained_file=str(weights), backbone_kwargs=NARROW)
    from mscsa_lab.registry import create_mscsa_model

    student = create_mscsa_model(backbone="resnet10t", num_classes=5, pretrained_file=str(weights),
                                 backbone_kwargs=NARROW, **SMALL_MSCSA).eval()
    outputs = TeacherOutputs(teacher.model, student)
    x = torch.randn(3, 3, 64, 64)
    assert outputs.check_shared(x)  # a ResNet's head takes the last stage map as it is
    with torch.no_grad():
        student(x)
        assert torch.allclose(outputs(x), teacher.model(x), atol=1e-4)
    outputs.close()


# ---------------------------------------------------------------------- slow: training runs
@pytest.fixture(scope="module")
def shapes_teacher(tmp_path_factory) -> Path:
    """A plain resnet10t (narrow) trained 80 steps on synthetic shapes at 48 px (objects of at
    least 30% of the image's side, which it learns in so few steps), saved as safetensors with a
    classes.json beside it."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(CLASSES), **NARROW)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 80
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps, pct_start=0.1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for step in range(steps):
        samples = [make_sample(step * 32 + i, seed=5, size=48, min_fraction=0.3) for i in range(32)]
        x = torch.stack([(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - mean) / std for s in samples])
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([s.label for s in samples]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    path = folder / "shapes_resnet10t.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    return path


@pytest.mark.slow
def test_distillation_learns_the_teachers_predictions_from_a_flat_folder(tmp_path, shapes_teacher):
    photos = write_shapes_folder(tmp_path / "photos", 80, 48, seed=9, flat=True, min_fraction=0.3)
    config = TrainConfig(data=str(photos), mode="distill", backbone="resnet10t", backbone_kwargs=NARROW,
                         mscsa=SMALL_MSCSA, pretrained_file=str(shapes_teacher), img_size=48, batch_size=16,
                         epochs=100, max_steps=100, lr=2e-3, val_fraction=0.5, workers=0, out=str(tmp_path / "run"))
    result = train(config)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["mode"] == "distill" and meta["classes"] == list(CLASSES)
    assert meta["teacher"]["classes_source"].endswith("classes.json") and meta["teacher"]["shared_backbone_pass"]
    assert meta["tokens"]["tokens_per_scale"] == [36, 9, 4] and meta["tokens"]["mscsa_grid"] == [6, 6]

    # Chance: always answering the teacher's most frequent class on the held-out images.
    model, _ = load_trained(tmp_path / "run")
    teacher = load_teacher("resnet10t", pretrained_file=str(shapes_teacher), backbone_kwargs=NARROW).model
    source = scan_images(str(photos), val_fraction=0.5, seed=0)
    _, eval_tf = build_transforms(result.data_config, augment=False)
    x = torch.stack([eval_tf(source.val[i][0]) for i in range(len(source.val))])
    with torch.no_grad():
        wanted, got = teacher(x).argmax(-1), model(x).argmax(-1)
    chance = 100.0 * np.bincount(wanted.numpy()).max() / len(wanted)
    agreement = 100.0 * (wanted == got).double().mean().item()
    assert agreement == pytest.approx(result.metrics["agreement_top1"], abs=1e-3)  # the saved file is the run's
    assert agreement >= chance + 25, (agreement, chance)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # 40 training images shown 10 times per epoch (25 steps of 16): held-out agreement after each epoch
    assert len(history) == 100 and list(history.dropna(subset=["val_agreement"])["step"]) == list(range(25, 101, 25))
    assert history["val_agreement"].iloc[-1] == pytest.approx(result.metrics["agreement_top1"])


def test_history_has_a_row_per_logged_step_even_when_the_run_stops_mid_epoch(tmp_path):
    config = TrainConfig(data="synthetic", backbone="resnet10t", backbone_kwargs=NARROW, mscsa=SMALL_MSCSA,
                         img_size=48, batch_size=8, epochs=3, synthetic_train=40, synthetic_val=8, max_steps=3,
                         workers=0, out=str(tmp_path / "run"))
    train(config)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["step"]) == [1, 2, 3] and list(history["epoch"]) == [1, 1, 1]
    assert history["train_loss"].notna().all() and history["val_top1"].notna().tolist() == [False, False, True]


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_save_the_batchnorm_statistics_they_evaluated_with(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch, safetensors.torch
        sys.path.insert(0, {str(ROOT)!r})
        from mscsa_lab.train import TrainConfig, train
        config = TrainConfig(data="synthetic", backbone="resnet10t", backbone_kwargs={NARROW!r}, mscsa={SMALL_MSCSA!r},
                             img_size=48, batch_size=4, epochs=2, synthetic_train=16, synthetic_val=8, scale=(0.3, 1.0),
                             workers=0, out={str(tmp_path / "run")!r})
        result = train(config)
        buffers = {{k: v.contiguous() for k, v in result.model.state_dict().items() if "running_" in k}}
        safetensors.torch.save_file(buffers, {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.safetensors")
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    rank0, rank1 = (read_state_dict(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    saved = read_state_dict(tmp_path / "run" / "model.safetensors")
    mscsa_keys = [k for k in rank0 if not k.startswith("backbone.")]
    assert mscsa_keys and all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved[k]) for k in rank0)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["world_size"] == 2 and "averaged" in meta["training"]["batchnorm_stats"]
    evaluation, _ = evaluate_trained(tmp_path / "run", "synthetic")
    assert evaluation.top1 == pytest.approx(meta["metrics"]["top1"], abs=1e-6)
    assert evaluation.loss == pytest.approx(meta["metrics"]["loss"], abs=1e-4)


def test_a_distillation_run_is_costed_at_the_backbones_size_with_the_teachers_classes(tmp_path):
    from mscsa_lab.workflows.training import training_spec

    weights = tmp_path / "t.safetensors"
    save_timm(weights, 7, **NARROW)
    assert teacher_class_count("resnet10t", str(weights)) == 7
    (tmp_path / "names.json").write_text(json.dumps(list("abcdefg")))
    assert teacher_class_count("resnet10t", None, str(tmp_path / "names.json")) == 7
    assert teacher_class_count("resnet10t") == 1000  # timm's ImageNet head
    spec = training_spec(TrainConfig(data="photos", mode="distill", backbone="resnet10t", backbone_kwargs=NARROW,
                                     pretrained_file=str(weights)))
    assert spec.num_classes == 7 and spec.input_size == (224, 224)  # img_size None: the backbone's own
    assert training_spec(TrainConfig(backbone="resnet50", img_size=None)).input_size == (288, 288)


@pytest.mark.slow
@pytest.mark.integration
def test_the_command_line_distils_with_every_option_and_evaluates_agreement(tmp_path):
    photos = write_shapes_folder(tmp_path / "photos", 12, 48, seed=4, flat=True)
    weights = tmp_path / "teacher.safetensors"
    save_timm(weights, 5, **NARROW)
    (tmp_path / "names.json").write_text(json.dumps([f"t-{c}" for c in CLASSES]))
    out = tmp_path / "run"
    common = ["--backbone", "resnet10t", "--backbone-arg", "channels=[32,64,128,256]", "--set", "pool_stride=8",
              "--set", "num_heads=4", "--set", "key_dim=16"]
    trained = run_command("train", "--mode", "distill", "--data", str(photos), *common, "--pretrained-file", str(weights),
                          "--teacher-classes", str(tmp_path / "names.json"), "--temperature", "2", "--img-size", "48",
                          "--max-steps", "3", "-b", "4", "--repeat", "2", "--scale", "0.5", "1", "--ratio", "0.9", "1.1",
                          "--hflip", "0", "--color-jitter", "0.1", "--aa", "none", "--workers", "0", "--no-progress",
                          "--out", str(out))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "scanning the data" in trained.stderr and "agreement with the teacher" in trained.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["mode"] == "distill" and meta["classes"] == [f"t-{c}" for c in CLASSES]
    assert meta["training"]["temperature"] == 2.0 and meta["input_size"] == [48, 48]
    augmentation = meta["training"]["augmentation"]
    assert augmentation["scale"] == [0.5, 1.0] and augmentation["ratio"] == [0.9, 1.1] and augmentation["hflip"] == 0
    assert augmentation["color_jitter"] == 0.1 and augmentation["auto_augment"] is None
    assert meta["training"]["config"]["repeat"] == 2

    evaluated = run_command("evaluate", str(out), "--data", str(photos), "--split", "all")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "agreement with the teacher: top-1" in evaluated.stdout and "on 12 images" in evaluated.stdout
    agreement = json.loads((out / "eval" / "agreement.json").read_text())
    assert agreement["images"] == 12 and 0 <= agreement["agreement_top1"] <= 100

    again = run_command("train", "--mode", "distill", "--data", str(photos), *common, "--pretrained-file", str(weights),
                        "--out", str(out))
    assert again.returncode == 2 and "holds a finished run" in again.stderr and "--overwrite" in again.stderr
