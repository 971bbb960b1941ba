"""The Train tab's "Explain a pretrained backbone" section: a few photos (or a folder) uploaded, a backbone
with its trained classifier (timm's weights or a weights file), one button. MSCSA and its head learn to
reproduce the backbone's own predictions on those photos (``mode="distill"``: no labels), with progress
streamed like training; the run is then chosen in the Saliency tab, whose maps show which keys and values
MSCSA uses for the backbone's classes.

The uploads are copied into one fresh folder per run, ``<runs folder>/.uploads/<run name>/`` (``photos/``
and ``teacher/``): the run's ``model.json`` names them, so the run can be evaluated or resumed later.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from mscsa_lab.models.config import ConfigError
from webapp.actions import wire
from webapp.context import AppContext
from webapp.forms import whole
from webapp.tabs import Shared

__all__ = ["render_explain", "explain_job", "write_photos", "UPLOADS", "SIZE_CHOICES", "MAX_PHOTOS"]

UPLOADS = ".uploads"  # inside the runs folder; a run name never starts with a dot
MAX_PHOTOS = 5000
SIZE_CHOICES = ("backbone's", "384", "448")
STEPS_PER_EPOCH = 25  # a distillation epoch shows the photos for at least this many steps (TrainConfig)


def _uploaded(files: Any) -> list[Path]:
    if not files:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [Path(getattr(item, "name", item)) for item in items]


def write_photos(photos: list[Path], folder: Path) -> tuple[int, list[str]]:
    """Copy the uploaded images into ``folder`` (fresh), each checked by the guarded image reader: JPEG and PNG
    as they are, other formats converted to PNG; files that are not images by their name are left out.
    Returns (images written, notes)."""
    from mscsa_lab.io.guarded import shown_name
    from mscsa_lab.io.images import ImageError, load_image
    from mscsa_lab.train.scan import IMAGE_SUFFIXES

    known = IMAGE_SUFFIXES | {".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".avif", ".mpo"}
    images = [p for p in photos if p.suffix.lower() in known]
    skipped = len(photos) - len(images)
    if not images:
        raise ConfigError("no photos: upload a few images (JPEG, PNG, WebP...) or a folder holding them")
    if len(images) > MAX_PHOTOS:
        raise ConfigError(f"{len(images)} photos uploaded: explain with at most {MAX_PHOTOS} (a few dozen suffice)")
    folder.mkdir(parents=True)
    for index, path in enumerate(images):
        try:
            image = load_image(path)
        except ImageError as error:
            raise ConfigError(f"photo {shown_name(path.name)} cannot be used: {error}") from None
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60] or "photo"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            shutil.copyfile(path, folder / f"{index:05d}_{stem}{path.suffix.lower()}")
        else:
            image.save(folder / f"{index:05d}_{stem}.png")
    notes = [f"left out {skipped} uploaded file(s) that are not images"] if skipped else []
    return len(images), notes


def _copy_teacher_files(weights: Path | None, classes: Path | None, folder: Path) -> tuple[str | None, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    copied_weights = copied_classes = None
    if weights is not None:
        suffix = weights.suffix.lower()
        if suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise ConfigError(f"weights file {weights.name[:200]!r}: give a .safetensors file, or a .pth/.pt read "
                              "weights-only")
        copied_weights = str(shutil.copyfile(weights, folder / f"teacher{suffix}"))
    if classes is not None:
        if classes.suffix.lower() != ".json":
            raise ConfigError(f"class names file {classes.name[:200]!r}: give a .json file (a list of names)")
        copied_classes = str(shutil.copyfile(classes, folder / "classes.json"))
    return copied_weights, copied_classes


def explain_job(context: AppContext, photos: Any, folder_files: Any, backbone: str, pretrained: bool, weights: Any,
                classes: Any, size: str, steps: Any, batch: Any, name: str | None = None):
    """Distil ``backbone``'s classifier into MSCSA on the uploaded photos; yields what ``train_job`` yields."""
    from webapp.tabs.train import run_out, train_job

    backbone = (backbone or "").strip()
    if not backbone:
        raise ConfigError("give the backbone to explain (a timm name such as resnet50)")
    weight_files, class_files = _uploaded(weights), _uploaded(classes)
    if not (pretrained or weight_files):
        raise ConfigError("explaining needs the backbone's trained classifier: tick 'timm's pretrained weights' or "
                          "upload its weights file")
    if size not in SIZE_CHOICES:
        raise ConfigError(f"image size {str(size)[:40]!r}: choose one of {', '.join(SIZE_CHOICES)}")
    steps = context.limits.check_count("max steps", whole("steps", steps, 1, 10**6), "max_train_steps")
    batch = context.limits.check_count("batch", whole("batch", batch, 1, 1024), "max_batch")
    epochs = max(1, min(context.limits.max_epochs, math.ceil(steps / STEPS_PER_EPOCH)))
    name, _ = run_out(context, name, default=f"explain-{backbone}"[:40])
    uploads = context.runs_dir / UPLOADS / name
    if uploads.is_symlink():
        uploads.unlink()
    elif uploads.exists():
        shutil.rmtree(uploads)  # the copy of an earlier attempt under this name that did not start
    try:
        count, notes = write_photos(_uploaded(photos) + _uploaded(folder_files), uploads / "photos")
        weights_file, classes_file = _copy_teacher_files(weight_files[0] if weight_files else None,
                                                         class_files[0] if class_files else None, uploads / "teacher")
    except BaseException:
        shutil.rmtree(uploads, ignore_errors=True)
        raise
    fields = dict(data=str(uploads / "photos"), mode="distill", backbone=backbone,
                  pretrained=bool(pretrained) and weights_file is None, pretrained_file=weights_file,
                  teacher_classes=classes_file, img_size=None if size == SIZE_CHOICES[0] else int(size),
                  max_steps=steps, epochs=epochs, batch_size=batch)
    first = True
    for text, figure, finished in train_job(context, fields, name, max_minutes=context.limits.max_train_minutes,
                                            default_name="explain"):
        if first and notes:
            text += " (" + "; ".join(notes) + ")"
        first = False
        yield text, figure, finished


def render_explain(context: AppContext, shared: Shared) -> None:
    from webapp.tabs.train import _sources, tokens_note

    gr.Markdown("### Explain a pretrained backbone\nUpload a few dozen photos (no labels). The backbone keeps its "
                "own trained classifier as the teacher; MSCSA and its head learn to reproduce its predictions on your "
                "photos, then the Saliency tab shows which keys and values, at which scale, MSCSA uses for the "
                "backbone's classes.")
    with gr.Row():
        photos = gr.File(label="Photos", file_count="multiple", type="filepath", elem_id="explain-photos", height=150)
        folder = gr.File(label="or a folder of photos", file_count="directory", type="filepath",
                         elem_id="explain-folder", height=150)
    with gr.Row():
        backbone = gr.Textbox("resnet50", label="Backbone (timm name)", elem_id="explain-backbone")
        pretrained = gr.Checkbox(True, label="timm's pretrained weights", elem_id="explain-pretrained")
        weights = gr.File(label="or its weights file (whole model, classifier included)", type="filepath",
                          file_types=[".safetensors", ".pth", ".pt", ".bin"], elem_id="explain-weights", height=120)
        classes = gr.File(label="Class names (optional JSON list)", type="filepath", file_types=[".json"],
                          elem_id="explain-classes", height=120)
    with gr.Row():
        size = gr.Radio(list(SIZE_CHOICES), value=SIZE_CHOICES[0], label="Image size (larger: finer maps)",
                        elem_id="explain-size")
        steps = gr.Number(200, label="Steps", precision=0, elem_id="explain-steps")
        batch = gr.Number(16, label="Batch", precision=0, elem_id="explain-batch")
        name = gr.Textbox("", label="Run name (blank = explain-<backbone>-<time>)", elem_id="explain-name")
    tokens = gr.Markdown(_initial_tokens(tokens_note, "resnet50"), elem_id="explain-tokens")
    with gr.Row():
        button = gr.Button("Explain", variant="primary", elem_id="explain-button")
        stop = gr.Button("Stop (keeps the last checkpoint)", elem_id="explain-stop")
    status = gr.Markdown(elem_id="explain-status")
    curves = gr.Plot(label="Agreement with the teacher", elem_id="explain-curves")

    def on_tokens(backbone, size):
        try:
            return tokens_note(dict(backbone=(backbone or "").strip() or None,
                                    img_size=None if size == SIZE_CHOICES[0] else int(size)))
        except Exception:  # noqa: BLE001 - a half-typed name: the note waits for a valid one
            return ""

    for trigger in (backbone.blur, size.change):
        trigger(on_tokens, [backbone, size], [tokens], queue=False, api_visibility="private")

    def on_explain(photos, folder, backbone, pretrained, weights, classes, size, steps, batch, name):
        for text, figure, finished in explain_job(context, photos, folder, backbone, pretrained, weights, classes,
                                                  size, steps, batch, name):
            runs = gr.update(choices=_sources(context), value=finished) if finished else gr.update()
            yield text, (figure if figure is not None else gr.update()), runs

    wire(context, "Train", button.click, on_explain,
         [photos, folder, backbone, pretrained, weights, classes, size, steps, batch, name], status, [curves],
         "copying the photos", api_name="explain", extra_outputs=[shared.saliency_source], concurrency_limit=1,
         concurrency_id="train")
    stop.click(lambda: context.jobs.stop(), None, [status], api_visibility="private")


def _initial_tokens(tokens_note, backbone: str, size: int | None = None) -> str:
    try:
        return tokens_note(dict(backbone=backbone, img_size=size))
    except Exception:  # noqa: BLE001 - only a hint on the page
        return ""
