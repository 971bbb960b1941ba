"""Saliency tab: per-scale maps of a CSA layer's keys and values for an uploaded image, for the demo model,
a trained run or the Build tab's model (with a checkpoint); a click on the preview shows that point's
attention over each scale."""
from __future__ import annotations

import time
from typing import Any

import gradio as gr

from mscsa_lab.explain.saliency import METHODS
from mscsa_lab.io.export import export_stem
from mscsa_lab.models.config import ConfigError
from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.workflows.explaining import saliency_action
from mscsa_lab.workflows.sources import LoadedModel, demo_model, spec_model, trained_model
from webapp.actions import failure_status, tab_action, wire
from webapp.context import AppContext
from webapp.runs import run_folder, trained_runs
from webapp.tabs import Shared

__all__ = ["render", "model_sources", "load_source", "run_saliency", "preview", "sample_images"]

SAMPLES = ASSETS_DIR / "samples"


def sample_images() -> list[str]:
    return sorted(str(p) for p in SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []


def model_sources(context: AppContext) -> list[tuple[str, str]]:
    """The model choices: the demo model, the Build tab's model, every trained run in the runs folder."""
    return ([("demo model (5 synthetic shapes)", "demo"), ("the Build tab's model", "build")]
            + trained_runs(context.runs_dir))


def load_source(context: AppContext, source: str, spec: Any, checkpoint: str | None) -> LoadedModel:
    """The model a request asks for, as the request's own copy."""
    if checkpoint and source != "build":
        raise ConfigError("a checkpoint applies to the Build tab's model: choose \"the Build tab's model\" as the "
                          "model, or remove the checkpoint")
    if source == "demo":
        return demo_model(context.store)
    if source == "build":
        if spec is None:
            raise ConfigError("build a model in the Build tab first, or use the demo model")
        return spec_model(spec, checkpoint, context.store, context.limits)
    return trained_model(run_folder(context.runs_dir, source), context.store, limits=context.limits,
                         root=context.runs_dir)


def run_saliency(context: AppContext, image: Any, method: str, kinds: list[str], block: Any, layer: Any, target: Any,
                 fit: str, source: str, checkpoint: str | None, spec: Any, query: tuple[int, int] | None = None
                 ) -> tuple:
    """(status, grid PNG, prediction, attention-mass chart, per-head PNG, raw maps .npz)."""
    from mscsa_lab.explain.render import save_maps
    from mscsa_lab.workflows.result import save_figure

    started = time.perf_counter()
    loaded = load_source(context, source or "demo", spec, checkpoint)
    result = saliency_action(image, loaded, method=method, kinds=kinds, block=int(block or 0), layer=int(layer or 1),
                             target=target, query=query, fit=fit)
    folder = context.output_dir("saliency")
    stem = export_stem(f"saliency-{result.data['results'][0].method}", loaded.name, None, loaded.input_size)
    grid = save_figure(result.figures["grid"], folder / f"{stem}_grid.png")
    heads = save_figure(result.figures["heads"], folder / f"{stem}_heads.png") if "heads" in result.figures else None
    npz = save_maps(result.data["results"][0], folder / f"{stem}_maps.npz")
    seconds = time.perf_counter() - started
    what = "attention of the clicked point" if query is not None else f"{result.data['results'][0].method} maps"
    status = f"Rendered {what} for {loaded.name} in {seconds:.1f} s."
    return (status, str(grid), result.summary, result.figures.get("mass"), str(heads) if heads else None, str(npz))


def preview(context: AppContext, image: Any, fit: str, source: str, spec: Any):
    """The uploaded image as the model will see it (resized to its input), or None before an upload."""
    from mscsa_lab.io.checkpoints import demo_metadata
    from mscsa_lab.io.images import prepare_image
    from webapp.runs import run_summary

    if image is None or (isinstance(image, str) and not image):
        return None
    if source == "demo":
        size = demo_metadata()["input_size"]
    elif source == "build":
        size = spec.input_size if spec is not None else (224, 224)
    else:
        size = run_summary(run_folder(context.runs_dir, source)).get("input_size", (224, 224))
    return prepare_image(image, tuple(size), fit=fit).display  # the picture only: no normalisation involved


def render(context: AppContext, shared: Shared) -> None:
    gr.Markdown("One map per scale (X0 full, X1 2x down, X2 3x down) of a CSA layer's keys or values. "
                "Click a point on the input to see its attention over each scale.")
    with gr.Row():
        with gr.Column(scale=1):
            # A file input, not gr.Image: every upload goes through mscsa_lab.io.images, whose errors say
            # what is wrong with a file (gr.Image would fail on it before our code runs).
            image = gr.File(label="Image (any format Pillow reads, up to 50 MB; or pick a sample below)",
                            type="filepath", elem_id="saliency-image")
            samples = sample_images()
            if samples:
                gr.Examples(samples, inputs=[image], label="Samples")
            shown = gr.Image(label="As the model sees it: click a point for its attention", interactive=False,
                             elem_id="saliency-preview", height=288)
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
            target = gr.Textbox("top-1", label="Target class (name or index; top-1 = predicted)")
            fit = gr.Radio(["pad", "crop"], value="pad", label="Resize: keep aspect (pad) or center-crop")
            button = gr.Button("Render maps", variant="primary", elem_id="saliency-button")
    status = gr.Markdown(elem_id="saliency-status")
    prediction = gr.Markdown(elem_id="saliency-prediction")
    grid = gr.Image(label="Per-scale maps", elem_id="saliency-grid", interactive=False)
    with gr.Row():
        mass = gr.Plot(label="Attention mass per scale and head", elem_id="saliency-mass")
        heads = gr.Image(label="Per-head maps", interactive=False, elem_id="saliency-heads")
    maps_file = gr.File(label="Raw maps (.npz)", elem_id="saliency-npz")
    shared.saliency_source = source
    results = [grid, prediction, mass, heads, maps_file]

    def on_saliency(image, method, kinds, block, layer, target, fit, source, checkpoint, spec) -> tuple:
        return run_saliency(context, image, method, kinds, block, layer, target, fit, source, checkpoint, spec)

    wire(context, "Saliency", button.click, on_saliency,
         [image, method, kinds, block, layer, target, fit, source, checkpoint, shared.model], status, results,
         "rendering maps", api_name="saliency")

    def on_preview(image, fit, source, spec):
        return preview(context, image, fit, source, spec)

    for trigger in (image.change, fit.change, source.change):
        event = trigger(tab_action(context, "Saliency", on_preview), [image, fit, source, shared.model], [shown])
        event.failure(failure_status(context, "Saliency"), None, [status], queue=False)

    def on_click(image, block, layer, fit, source, checkpoint, spec, event: gr.SelectData) -> tuple:
        return run_saliency(context, image, "query", ["attention"], block, layer, None, fit, source, checkpoint, spec,
                            query=tuple(event.index))

    click = shown.select(_click_handler(context, on_click), [image, block, layer, fit, source, checkpoint,
                                                             shared.model], [status, *results])
    click.failure(failure_status(context, "Saliency"), None, [status], queue=False)


def _click_handler(context: AppContext, on_click):
    """A select handler: Gradio passes the click (``gr.SelectData``) by annotation, and the request."""
    from webapp.actions import failure_text

    def handler(image, block, layer, fit, source, checkpoint, spec, event: gr.SelectData,
                request: gr.Request):
        try:
            return on_click(image, block, layer, fit, source, checkpoint, spec, event)
        except Exception as error:  # noqa: BLE001 - shown in the status line
            message = failure_text(error, "the Saliency tab")
            context.remember(request.session_hash or "", "Saliency", message)
            raise gr.Error(message, duration=None) from None

    return handler
