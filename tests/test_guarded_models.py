"""Images, checkpoints and trained runs read through the guarded readers: the hostile corpus's
image and checkpoint files each give their message straight from the library, EPS never reaches
Ghostscript, odd tensor types and huge tensor counts are refused, and a run's ``model.json`` is
checked field by field."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hostile_corpus import PAYLOAD_MARKER, checkpoint_cases, eps_bytes, image_cases, write_corpus
from mscsa_lab.io.checkpoints import (DEMO_WEIGHTS, CheckpointError, load_checkpoint, load_demo_model, load_torch_file,
                                      load_trained, read_state_dict)
from mscsa_lab.io.images import ImageError, load_image
from mscsa_lab.io.run_metadata import RunMetadataError, read_run_metadata, validate_run_metadata

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    model, meta = load_demo_model()
    return model, meta


def run_folder(folder: Path, meta: dict, demo_meta: dict | None = None) -> Path:
    """A trained-run folder as ``mscsa_lab.train`` writes it: the demo model's weights and a
    ``model.json`` with the fields training records (``meta`` overrides them)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO_WEIGHTS, folder / "model.safetensors")
    base = {
        "format": "mscsa_lab.trained/1", "weights": "model.safetensors", "weights_kind": "model", "profile": None,
        "backbone": demo_meta["backbone"], "backbone_kwargs": demo_meta["backbone_kwargs"],
        "mscsa": demo_meta["mscsa"], "task": "classification", "num_classes": 5, "classes": demo_meta["classes"],
        "input_size": demo_meta["input_size"],
        "preprocessing": {"mean": demo_meta["preprocessing"]["mean"], "std": demo_meta["preprocessing"]["std"],
                          "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
        "metrics": {"top1": 98.3, "top5": 100.0, "loss": 0.05, "images": 1000,
                    "per_class_accuracy": {"circle": 99.0, "square": None}},
        "training": {"mode": "scratch", "config": {"lr": 0.003, "nested": {"a": [1, 2]}}},
        "parameters": 1568117, "metadata": {"libraries": {"timm": "1.0"}}, "command": "python -m mscsa_lab train",
    }
    base.update(meta)
    (folder / "model.json").write_text(json.dumps({k: v for k, v in base.items() if v is not ...}))
    return folder


# ---------------------------------------------------------------------- images
@pytest.mark.parametrize("case", image_cases(), ids=lambda c: c.name)
def test_image_corpus_from_the_library(case, tmp_path):
    (_, path), = write_corpus(tmp_path, [case])
    try:
        load_image(path)
        message = "ok"
    except ImageError as error:
        message = str(error)
    assert re.search(case.expect if case.expect != "ok" else "^ok$", message), message


def test_eps_never_runs_ghostscript(tmp_path, monkeypatch):
    """A fake ``gs`` first on PATH records every call: plain Pillow runs it for an EPS file (the
    control, in a fresh interpreter), ``load_image`` refuses the file and never does."""
    import PIL.EpsImagePlugin

    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "gs-calls"
    (fake / "gs").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 1\n")
    (fake / "gs").chmod(0o755)
    image = tmp_path / "drawing.eps"
    image.write_bytes(eps_bytes())
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(PIL.EpsImagePlugin, "gs_binary", None)  # Pillow looks for gs afresh, on PATH
    with pytest.raises(ImageError, match="PostScript/EPS files are documents, not pictures"):
        load_image(image)
    assert not log.exists(), f"gs ran: {log.read_text()}"
    control = f"from PIL import Image\ntry:\n    Image.open({str(image)!r}).load()\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", control], env=dict(os.environ), capture_output=True, timeout=60)
    assert log.exists(), "the control did not reach gs: this test could not see a call"


def test_image_sources_are_capped(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(60 * 2**20)
    with pytest.raises(ImageError, match=r"'.*big.png' is 60.0 MiB: the limit is 50.0 MiB"):
        load_image(big)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(ImageError, load_image, pipe)), daemon=True)
    thread.start()
    thread.join(10)
    assert outcome and "named pipe" in str(outcome[0].value)
    with pytest.raises(ImageError, match="an image must be a file path"):
        load_image(12)
    data = tmp_path / "data" / "cats"
    data.mkdir(parents=True)
    outside = tmp_path / "outside.png"
    write_corpus(tmp_path, [case for case in image_cases() if case.name == "RGBA"])[0][1].rename(outside)
    (data / "cat.png").symlink_to(outside)
    assert load_image(data / "cat.png").size == (128, 96)
    with pytest.raises(ImageError, match=r"image file '.*cat.png' points outside '.*data'"):
        load_image(data / "cat.png", root=tmp_path / "data")


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.slow  # writes the 40 MB, 600k-tensor file and a 30k-entry zip: 3-8 s
def test_checkpoint_corpus_from_the_library(demo, tmp_path):
    model, _ = demo
    marker = tmp_path / PAYLOAD_MARKER
    for case, path in write_corpus(tmp_path / "files", checkpoint_cases(marker, model.state_dict())):
        try:
            load_checkpoint(model, path)
            message = "ok"
        except CheckpointError as error:
            message = str(error)
        if case.name == "NaN weights":  # loads: the app, not the loader, refuses NaN weights before predicting
            assert message == "ok"
            continue
        assert re.search(case.expect, message), (case.name, message)
        assert len(message) < 600 and "weights_only=False" not in message, (case.name, message)
    assert not marker.exists(), "a pickled payload ran"


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.float8_e5m2, torch.complex64])
def test_tensor_types_a_float_model_cannot_use(demo, tmp_path, dtype):
    model, _ = demo
    state = {k: (v.to(dtype) if k.endswith("weight") and v.is_floating_point() else v.contiguous())
             for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"holds \d+ tensor\(s\) of a type this model cannot use \(.*weight is "
                                              rf"{name}, .* and \d+ more\): the model needs float weights"):
        load_checkpoint(model, tmp_path / "w.safetensors")
    half = {k: (v.half() if v.is_floating_point() else v.contiguous()) for k, v in model.state_dict().items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    load_checkpoint(model, tmp_path / "half.safetensors")  # fp16 weights still load, converted


def test_mismatch_messages_name_a_few_keys(demo, tmp_path):
    model, _ = demo
    state = {**{k: v.contiguous() for k, v in model.state_dict().items()},
             **{f"extra.layer{i}.weight": torch.zeros(1) for i in range(500)}}
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, tmp_path / "extra.safetensors")
    message = str(caught.value)
    assert re.search(r"500 unexpected \((extra\.layer\d+\.weight, ){2}extra\.layer\d+\.weight and 497 more\)", message)
    assert len(message) < 400


def test_tensor_counts_are_read_from_the_header(tmp_path):
    from hostile_corpus import many_tensors_safetensors

    many_tensors_safetensors(30_000)(tmp_path / "30k.safetensors")  # under the header cap: counted
    with pytest.raises(CheckpointError, match=r"30k.safetensors holds 30,000 tensors, above the limit of 20,000"):
        read_state_dict(tmp_path / "30k.safetensors")
    many_tensors_safetensors(300)(tmp_path / "300.safetensors")
    assert len(read_state_dict(tmp_path / "300.safetensors")) == 300
    huge_header = tmp_path / "600k.safetensors"  # the header length of 600k tensors; sparse, never read
    with open(huge_header, "wb") as handle:
        handle.write((42 * 10**6).to_bytes(8, "little"))
        handle.truncate(45 * 10**6)
    with pytest.raises(CheckpointError, match=r"600k.safetensors: its safetensors header is 40.1 MiB \(more than about "
                                              r"83,886 tensors\), above the limit of 8.00 MiB; no model here holds"):
        read_state_dict(huge_header)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"its header claims 977 KiB, more than the file holds"):
        read_state_dict(lying)


class Custom:
    """Any object torch.load(weights_only=True) must refuse."""


def test_torch_files_have_our_messages(tmp_path):
    torch.save({"weight": torch.zeros(2), "thing": Custom()}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match=r"besides tensors it holds Python objects or code") as caught:
        load_torch_file(tmp_path / "objects.pth")
    assert "weights_only=False" not in str(caught.value)
    torch.save({"epoch": 3, "weights": torch.ones(2)}, tmp_path / "state.pth")
    assert load_torch_file(tmp_path / "state.pth")["epoch"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link.pth").symlink_to(tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="points outside"):
        load_torch_file(tmp_path / "other" / "link.pth", root=tmp_path / "other")


# ---------------------------------------------------------------------- trained runs
def test_a_valid_run_loads(demo, tmp_path):
    _, demo_meta = demo
    folder = run_folder(tmp_path / "run", {}, demo_meta)
    model, meta = load_trained(folder, root=tmp_path)
    assert meta["classes"] == demo_meta["classes"] and not model.training
    assert validate_run_metadata(json.loads((folder / "model.json").read_text())) == meta


BAD_RUNS = [
    ({"metrics": [1]}, r"'metrics' must be a table of numbers, got a list: \[1\]"),
    ({"classes": 5}, r"'classes' must be a list of class names \(strings\), got a whole number: 5"),
    ({"classes": ["a", "b"]}, r"'classes' has 2 names but 'num_classes' is 5"),
    ({"input_size": [8000, 8000]}, r"'input_size\[0\]'=8000 is out of range: choose 32..4096"),
    ({"mscsa": {"depth": 24, "num_heads": 65}}, r"'mscsa': invalid MSCSA configuration: num_heads=65 is out of range"),
    ({"mscsa": [1]}, r"'mscsa' must be a table of MSCSA settings, got a list"),
    ({"preprocessing": {"mean": [0.5, 0.5], "std": [1, 1, 1]}},
     r"'preprocessing.mean' must have exactly 3 entries, got 2"),
    ({"preprocessing": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, r"'preprocessing.std\[1\]'=0 is out of range"),
    ({"backbone": ...}, r"'backbone' is missing: it is required"),
    ({"weights": "../../outside.safetensors"}, r"'weights' must be a file name inside the run folder"),
    ({"training": json.loads("[" * 40 + "]" * 40)}, r"'training' must be a table"),
    ({"metadata": {"a": json.loads("[" * 40 + "]" * 40)}}, r"'metadata.a' is nested more than 16 levels deep"),
]


@pytest.mark.parametrize("changes, message", BAD_RUNS,
                         ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(BAD_RUNS)])
def test_malformed_model_json_names_the_field(demo, tmp_path, changes, message):
    folder = run_folder(tmp_path / "run", changes, demo[1])
    with pytest.raises(RunMetadataError, match=r"^run file '.*model.json': " + message):
        load_trained(folder)


def test_model_json_files_that_are_not_json_objects(demo, tmp_path):
    folder = run_folder(tmp_path / "run", {}, demo[1])
    meta_path = folder / "model.json"
    cases = [("[" * 100_000 + "]" * 100_000, r"nested too deeply"), ("[1]", r"must be a JSON object"),
             ('{"a": ', r"is not valid JSON")]
    for content, message in cases:
        meta_path.write_text(content)
        with pytest.raises(RunMetadataError, match=message):
            read_run_metadata(folder)
    meta_path.unlink()
    with open(meta_path, "wb") as handle:  # 288 MiB, sparse: refused from its size
        handle.truncate(288 * 2**20)
    with pytest.raises(RunMetadataError, match=r"model.json' is 288 MiB: the limit is 8.00 MiB"):
        read_run_metadata(folder)
    meta_path.unlink()
    with pytest.raises(RunMetadataError, match="holds no model.json"):
        read_run_metadata(folder)


def test_run_files_must_stay_in_their_folder(demo, tmp_path):
    outside = run_folder(tmp_path / "elsewhere", {}, demo[1])
    runs = tmp_path / "runs"
    folder = run_folder(runs / "run", {}, demo[1])
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint '.*model.safetensors' points outside '.*run'"):
        load_trained(folder)
    (runs / "alias").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"trained model folder '.*alias' points outside '.*runs'"):
        load_trained(runs / "alias", root=runs)
