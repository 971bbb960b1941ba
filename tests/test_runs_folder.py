"""The runs folder as the app meets it: malformed runs are skipped (never the app's start), names cannot
point elsewhere, a chosen run is costed like any request, runs are written only inside the folder."""
import json
import shutil
from pathlib import Path

import pytest

from mscsa_lab.errors import UserError
from mscsa_lab.io.checkpoints import demo_metadata
from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.workflows.limits import ResourceError, ResourceLimits
from mscsa_lab.workflows.sources import trained_model
from webapp.context import AppContext
from webapp.runs import run_folder, trained_runs


def make_run(runs: Path, name: str, **changes) -> Path:
    """A finished run: the demo model's weights and metadata, with ``changes`` to its model.json."""
    folder = runs / name
    folder.mkdir(parents=True)
    shutil.copy(ASSETS_DIR / "demo_model.safetensors", folder / "model.safetensors")
    meta = {**demo_metadata(), "num_classes": 5, "task": "classification", **changes}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_malformed_runs_are_skipped_and_the_good_ones_listed(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "good")
    make_run(runs, "bad-metrics", metrics=[1])
    make_run(runs, "bad-classes", classes=5)
    nested = make_run(runs, "deep")
    (nested / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "not-a-run").mkdir()
    names = [name for _, name in trained_runs(runs)]
    assert names == ["good"]
    import app

    assert app.make_app(AppContext(runs_dir=runs)) is not None  # the page is built despite them


def test_run_names_cannot_point_outside_the_runs_folder(tmp_path):
    runs, outside = tmp_path / "runs", tmp_path / "elsewhere"
    make_run(outside, "secret")
    runs.mkdir()
    (runs / "link").symlink_to(outside / "secret")
    for name in ("../elsewhere/secret", str(outside / "secret"), "link", "..", "nope"):
        with pytest.raises(UserError, match="trained run|no trained run"):
            run_folder(runs, name)
    make_run(runs, "fine")
    assert run_folder(runs, "fine") == (runs / "fine").resolve()


def test_a_chosen_run_is_costed_before_it_is_built(tmp_path):
    runs = tmp_path / "runs"
    huge = make_run(runs, "huge", input_size=[4096, 4096])
    with pytest.raises(ResourceError, match="input 4096x4096 is above this server's limit of 2048"):
        trained_model(huge, limits=ResourceLimits(), root=runs)
    good = trained_model(make_run(runs, "good"), limits=ResourceLimits(), root=runs)
    assert good.class_names == demo_metadata()["classes"]


def test_training_never_writes_through_a_link_out_of_the_runs_folder(tmp_path):
    from webapp.tabs.train import train_job

    runs, outside = tmp_path / "runs", tmp_path / "elsewhere"
    runs.mkdir()
    outside.mkdir()
    (runs / "escape").symlink_to(outside)
    fields = dict(data="synthetic", backbone="resnet10t", mode="scratch", epochs=1, batch_size=4, img_size=32)
    with pytest.raises(UserError, match="link out of the runs folder"):
        next(train_job(AppContext(runs_dir=runs), fields, "escape"))
    assert not any(outside.iterdir())


def test_uploads_are_kept_under_a_total_cap_oldest_first_never_the_newest(tmp_path):
    import os
    import time

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    context = AppContext(runs_dir=tmp_path / "runs", uploads_dir=uploads, upload_cap_bytes=3000)
    now = time.time()
    for index, age in enumerate((3600, 1800, 600, 5)):  # seconds old
        path = uploads / f"f{index}" / "upload.bin"
        path.parent.mkdir()
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    assert context.sweep_uploads() == 1000  # 4000 bytes over a 3000 cap: the oldest one goes
    assert not (uploads / "f0" / "upload.bin").exists() and (uploads / "f3" / "upload.bin").exists()
    context.upload_cap_bytes = 0
    context.sweep_uploads()  # everything old enough goes; the 5-second-old upload may still be in use
    assert [p.parent.name for p in uploads.rglob("*.bin")] == ["f3"]
