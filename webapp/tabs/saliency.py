"""Saliency tab: per-scale maps of a CSA layer's keys and values for an uploaded image, for the demo model,
a trained run or the Build tab's model (with a checkpoint), with deletion/insertion faithfulness beside
random and centre baselines. The preview is the model's input drawn large; a click anywhere on it shows
that point's attention over each scale (a marker on the clicked cell), and a click on the padding says so
in the status line."""
from __future__ import annotations

import time
from typing import Any

import gradio as gr

from mscsa_lab.explain.methods import METHODS
from mscsa_lab.io.export import export_stem
from mscsa_lab.models.config import ConfigError
from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.workflows.explaining import preview_view, saliency_action
from mscsa_lab.workflows.sources import LoadedModel, demo_model, spec_model, trained_model
from webapp.actions import failure_status, tab_action, wire
from webapp.context import AppContext
from webapp.runs import run_folder, trained_runs
from webapp.tabs import Shared

__all__ = ["render", "model_sources", "load_source", "run_saliency", "click_saliency", "preview",
           "sample_images", "PREVIEW_BOX"]

SAMPLES = ASSETS_DIR / "samples"
PREVIEW_BOX = 512  # pixels: the preview's box, square like most model inputs, which the input view fills


def sample_images() -> list[str]:
    return sorted(str(p) for p in SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []


def model_sources(context: AppContext) -> list[tuple[str, str]]:
    """The model choices: the demo model, the Build tab's model, every trained run in the runs folder."""
    return ([("demo model (5 synthetic shapes)", "demo"), ("the Build tab's model", "build")]
            + trained_runs(context.runs_dir))


def load_source(context: AppContext, source: str, spec: Any, checkpoint: str | None) -> LoadedModel:
    """The model a request asks for: the store's own (the saliency pass changes nothing on it and its hooks act
    only in their own thread, so concurrent requests share it without copying it)."""
    if checkpoint and source != "build":
        raise ConfigError("a checkpoint applies to the Build tab's model: choose \"the Build tab's model\" as the "
                          "model, or remove the checkpoint")
    if source == "demo":
        return demo_model(context.store, shared=True)  # the saliency pass changes nothing on a model
    if source == "build":
        if spec is None:
            raise ConfigError("build a model in the Build tab first, or use the demo model")
        return spec_model(spec, checkpoint, context.store, context.limits, shared=True)
    return trained_model(run_folder(context.runs_dir, source), context.store, limits=context.limits, shared=True,
                         root=context.runs_dir)


def run_saliency(context: AppContext, image: Any, method: str, kinds: list[str], block: Any, layer: Any, target: Any,
                 fit: str, source: str, checkpoint: str | None, spec: Any, query: tuple[float, float] | None = None,
                 faithfulness: bool = False, click: tuple[float, float] | None = None) -> tuple:
    """(status, grid PNG, prediction, attention-mass chart, per-head PNG, raw maps .npz, faithfulness chart,
    faithfulness text, input view). ``query``: a pixel of the model's input; ``click``: a point on the input
    view; a click outside the picture changes only the status line (its message) and the view (a cross)."""

    started = time.perf_counter()
    loaded = load_source(context, source or "demo", spec, checkpoint)
    result = saliency_action(image, loaded, method=method, kinds=kinds, block=int(block or 0), layer=int(layer or 1),
                             target=target, query=query, click=click, fit=fit, faithfulness=bool(faithfulness))
    if not result.data["results"]:  # the click missed the picture
        return (f"**Nothing rendered:** {result.warnings[0]}.", *([gr.skip()] * 7), result.data["view"])
    first = result.data["results"][0]
    folder = context.output_dir("saliency")
    stem = export_stem(f"saliency-{first.method}", loaded.name, None, loaded.input_size)
    images = result.data["images"]
    grid = _save_image(images["grid"], folder / f"{stem}_grid.png")
    heads = _save_image(images["heads"], folder / f"{stem}_heads.png") if "heads" in images else None
    npz = _save_maps(result.data["results"], folder / f"{stem}_maps.npz")
    seconds = time.perf_counter() - started
    cell = result.data["query_cell"]
    if cell is not None:
        rows, cols = result.data["grid_size"]
        what = f"the attention of the clicked point (cell {cell[0]}, {cell[1]} of {rows}x{cols})"
    else:
        what = f"{first.method} maps"
    status = f"Rendered {what} for {loaded.name} in {seconds:.1f} s."
    return (status, str(grid), result.summary, result.figures.get("mass"), str(heads) if heads else None, str(npz),
            result.figures.get("faithfulness"), result.data.get("faithfulness_text", ""), result.data["view"])


def click_saliency(context: AppContext, image: Any, block: Any, layer: Any, fit: str, source: str,
                   checkpoint: str | None, spec: Any, point: Any) -> tuple:
    """A click at ``point`` (x, y) on the input view: that point's attention, or the message of a miss."""
    if image is None or (isinstance(image, str) and not image):
        raise ConfigError("upload an image or pick a sample first, then click on the preview")
    if point is None or len(point) != 2:
        raise ConfigError("the click carried no position: click on the picture in the preview")
    return run_saliency(context, image, "query", ["key"], block, layer, None, fit, source, checkpoint, spec,
                        faithfulness=False, click=(float(point[0]), float(point[1])))


def _save_image(image, path):
    from PIL import Image

    Image.fromarray(image).save(path, optimize=False, compress_level=1)
    return path


def _save_maps(results: list, path):
    """Every result's arrays in one ``.npz``, keyed ``KIND_NAME`` (e.g. ``key_scale0_map``)."""
    import numpy as np

    arrays = {f"{r.kind}_{name}": value for r in results for name, value in r.as_arrays().items()}
    np.savez_compressed(path, **arrays)
    return path


def _input_size(context: AppContext, source: str, spec: Any) -> tuple[int, int]:
    from mscsa_lab.io.checkpoints import demo_metadata
    from webapp.runs import run_summary

    if source == "demo":
        return tuple(demo_metadata()["input_size"])
    if source == "build":
        return tuple(spec.input_size) if spec is not None else (224, 224)
    return tuple(run_summary(run_folder(context.runs_dir, source)).get("input_size", (224, 224)))


def preview(context: AppContext, image: Any, fit: str, source: str, spec: Any):
    """The model's input drawn large (the clickable preview), or None before an upload."""
    return preview_view(image, _input_size(context, source, spec), fit=fit)


def render(context: AppContext, shared: Shared) -> None:
    gr.Markdown("One map per scale (X0 full, X1 2x down, X2 3x down) of a CSA layer's keys or values, drawn over "
                "the picture (padding left out), with deletion/insertion scores that say whether the maps beat a "
                "random and a centre map. Click anywhere on the picture in the preview to see that point's "
                "attention over each scale.")
    with gr.Row():
        with gr.Column(scale=1):
            # A file input, not gr.Image: every upload goes through mscsa_lab.io.images, whose errors say
            # what is wrong with a file (gr.Image would fail on it before our code runs).
            image = gr.File(label="Image (any format Pillow reads, up to 50 MB; or pick a sample below)",
                            type="filepath", elem_id="saliency-image")
            samples = sample_images()
            if samples:
                gr.Examples(samples, inputs=[image], label="Samples")
            shown = gr.Image(label="The model's input (stripes: padding): click a point for its attention",
                             interactive=False, elem_id="saliency-preview", height=PREVIEW_BOX, width=PREVIEW_BOX,
                             format="png")
        with gr.Column(scale=1):
            source = gr.Dropdown(model_sources(context), value="demo", label="Model (trained runs appear here)",
                                 elem_id="saliency-source")
            checkpoint = gr.File(label="Checkpoint for the Build tab's model (.safetensors / .pth, up to 512 MB)",
                                 file_types=[".safetensors", ".pth", ".pt"], type="filepath",
                                 elem_id="saliency-checkpoint")
            method = gr.Dropdown(list(METHODS), value="gradxact",
                                 label="Method (gradxact = HiResCAM, class-targeted)")
            kinds = gr.CheckboxGroup(["key", "value"], value=["key", "value"], label="Keys / values")
            with gr.Row():
                block = gr.Number(0, label="Block", precision=0)
                layer = gr.Radio([1, 2], value=1, label="CSA layer")
            target = gr.Textbox("top-1", label="Target class (a name, e.g. star or goldfish, or an index; "
                                               "top-1 = the predicted class)")
            fit = gr.Radio(["pad", "crop"], value="pad", label="Resize: keep aspect (pad) or center-crop")
            faithful = gr.Checkbox(False, label="Faithfulness: deletion/insertion scores beside random and centre maps "
                                               "(several times slower)", elem_id="saliency-faithful")
            button = gr.Button("Render maps", variant="primary", elem_id="saliency-button")
    status = gr.Markdown(elem_id="saliency-status")
    prediction = gr.Markdown(elem_id="saliency-prediction")
    grid = gr.Image(label="Per-scale maps", elem_id="saliency-grid", interactive=False)
    with gr.Row():
        mass = gr.Plot(label="Attention mass per scale and head", elem_id="saliency-mass")
        heads = gr.Image(label="Per-head maps", interactive=False, elem_id="saliency-heads")
    with gr.Row():
        faith_chart = gr.Plot(label="Deletion and insertion (dashed: random and centre maps)",
                              elem_id="saliency-faithfulness-chart")
        faith_text = gr.Markdown(elem_id="saliency-faithfulness")
    maps_file = gr.File(label="Raw maps (.npz)", elem_id="saliency-npz")
    shared.saliency_source = source
    results = [grid, prediction, mass, heads, maps_file, faith_chart, faith_text]

    def on_saliency(image, method, kinds, block, layer, target, fit, source, checkpoint, spec,
                    faithfulness=True) -> tuple:
        return run_saliency(context, image, method, kinds, block, layer, target, fit, source, checkpoint, spec,
                            faithfulness=faithfulness)

    wire(context, "Saliency", button.click, on_saliency,
         [image, method, kinds, block, layer, target, fit, source, checkpoint, shared.model, faithful], status,
         results, "rendering maps", api_name="saliency", extra_outputs=[shown])

    def on_preview(image, fit, source, spec):
        return preview(context, image, fit, source, spec)

    for trigger in (image.change, fit.change, source.change):
        event = trigger(tab_action(context, "Saliency", on_preview), [image, fit, source, shared.model], [shown])
        event.failure(failure_status(context, "Saliency"), None, [status], queue=False)

    click = shown.select(_click_handler(context), [image, block, layer, fit, source, checkpoint, shared.model],
                         [status, *results, shown])
    click.failure(failure_status(context, "Saliency"), None, [status], queue=False)


def _click_handler(context: AppContext):
    """A select handler: Gradio passes the click (``gr.SelectData``) by annotation, and the request."""
    from webapp.actions import failure_text

    def handler(image, block, layer, fit, source, checkpoint, spec, event: gr.SelectData,
                request: gr.Request):
        try:
            return click_saliency(context, image, block, layer, fit, source, checkpoint, spec, event.index)
        except Exception as error:  # noqa: BLE001 - shown in the status line
            message = failure_text(error, "the Saliency tab")
            context.remember(request.session_hash or "", "Saliency", message)
            raise gr.Error(message, duration=10) from None

    return handler
