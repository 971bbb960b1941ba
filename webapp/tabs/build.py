"""Build tab: a Table 7 profile or any timm backbone, its MSCSA settings, classes and backbone weights;
shows stages, key/value scales, parameters and the diagram; pins configurations for Compare."""
from __future__ import annotations

import time
from typing import Any

import gradio as gr

from mscsa_lab.io.export import export_stem
from mscsa_lab.models.config import DOWNSAMPLE_STRATEGIES, ConfigError
from mscsa_lab.workflows.build import build_action
from mscsa_lab.workflows.spec import ModelSpec
from webapp.actions import failure_status, tab_action, wire
from webapp.context import AppContext
from webapp.forms import BUILD_FIELDS, build_spec
from webapp.tabs import Shared, profile_choices, result_frame, show_frame

__all__ = ["render", "run_build", "pin", "pinned_text", "MAX_PINNED"]

MAX_PINNED = 6


def run_build(context: AppContext, values: dict[str, Any]) -> tuple:
    """(status, summary, stages, scales, parameters, diagram, diagram files, the built spec)."""
    started = time.perf_counter()
    spec = build_spec(values)
    result = build_action(spec, store=context.store, limits=context.limits)
    folder = context.output_dir("build")
    stem = folder / export_stem("diagram", spec.label, spec.task, spec.input_size)
    from mscsa_lab.analysis.diagram import figure_svg

    # The diagram is drawn once, as SVG (its words kept as text): shown in the page and offered for download
    # (rasterising it as well took as long as building a small model; `mscsa-lab build NAME --plot x.png` does).
    stem.with_suffix(".svg").write_text(figure_svg(result.figure), encoding="utf-8")
    files = [str(stem.with_suffix(".svg"))]
    status = f"Built {spec.label} + MSCSA in {time.perf_counter() - started:.1f} s."
    text = result.summary + "\n\n" + "\n".join(result.notes)
    return (status, text, show_frame(result.table), show_frame(result.tables["scales"]),
            show_frame(result.tables["params"]), files[0], files, spec)


def pinned_text(pinned: list[ModelSpec] | None) -> str:
    if not pinned:
        return "No configurations pinned: build one and press *Pin for Compare*."
    return "Pinned for Compare: " + "; ".join(f"`{spec.label}` ({spec.size_text}, {spec.task})" for spec in pinned)


def pin(pinned: list[ModelSpec] | None, spec: ModelSpec | None) -> tuple[list[ModelSpec], str, str]:
    """Pin the Build tab's model for the Compare tab (several configurations side by side)."""
    pinned = list(pinned or [])
    if spec is None:
        raise ConfigError("build a model first, then pin it")
    if spec in pinned:
        raise ConfigError(f"{spec.label} at {spec.size_text} is pinned already")
    if len(pinned) >= MAX_PINNED:
        raise ConfigError(f"at most {MAX_PINNED} pinned configurations: clear them first")
    pinned.append(spec)
    return pinned, pinned_text(pinned), f"Pinned {spec.label} ({len(pinned)} of {MAX_PINNED})."


def render(context: AppContext, shared: Shared) -> None:
    with gr.Row():
        profile = gr.Dropdown(profile_choices(), value="pvt_v2_b1", label="Table 7 profile")
        backbone = gr.Textbox(label="or any timm backbone (overrides the profile)", placeholder="e.g. efficientnet_b0",
                              elem_id="build-backbone")
        task = gr.Radio(["classification", "dense"], value="classification", label="Task")
    with gr.Row():
        height = gr.Number(224, label="Input height", precision=0, elem_id="build-height")
        width = gr.Number(224, label="Input width", precision=0, elem_id="build-width")
        # Text, not gr.Number: a blank number field reaches the server as 0, not "unset".
        depth = gr.Textbox(label="Depth (blank = profile)", elem_id="build-depth")
        num_heads = gr.Textbox(label="Heads (blank = profile)", elem_id="build-heads")
        key_dim = gr.Textbox(label="Head dim d (blank = profile)", elem_id="build-key-dim")
        mlp_ratio = gr.Textbox(label="MLP ratio (blank = profile)", elem_id="build-mlp")
        squeeze = gr.Textbox(label="Squeeze ratio (5/8, none; blank = profile)", elem_id="build-squeeze")
    with gr.Row():
        use_pcp = gr.Checkbox(True, label="Parallel convolution path")
        use_intra_ffn = gr.Checkbox(True, label="Intra-FFN")
        use_msp = gr.Checkbox(True, label="Multi-scale K/V (MSP)")
        downsample = gr.Dropdown(list(DOWNSAMPLE_STRATEGIES), value="dwconv", label="MSP down-sampling")
        num_classes = gr.Textbox("1000", label="Classes (as the checkpoint you will load)", elem_id="build-classes")
    with gr.Row():
        pretrained = gr.Checkbox(False, label="Pretrained backbone (timm weights: downloaded, or from the cache)")
        weights_file = gr.File(label="or a backbone weights file (.safetensors, or .pth read weights-only)",
                               file_types=[".safetensors", ".pth", ".pt", ".bin"], type="filepath",
                               elem_id="build-weights")
    with gr.Row():
        build = gr.Button("Build", variant="primary", elem_id="build-button")
        pin_button = gr.Button("Pin for Compare", elem_id="pin-button")
        unpin = gr.Button("Clear pinned")
    status = gr.Markdown(elem_id="build-status")
    pinned_note = gr.Markdown(pinned_text([]), elem_id="pinned-note")
    summary = gr.Markdown(elem_id="build-summary")
    stages = result_frame("Stages", "build-stages")
    with gr.Row():
        scales = result_frame("Key/value scales", "build-scales")
        params = result_frame("Parameters", "build-params")
    diagram = gr.Image(label="The built model (drawn from the model itself)", elem_id="build-diagram",
                       interactive=False, type="filepath")
    diagram_files = gr.File(label="Diagram (SVG)", file_count="multiple", elem_id="build-files")

    fields = dict(zip(BUILD_FIELDS, (profile, backbone, task, height, width, depth, num_heads, key_dim, mlp_ratio,
                                     squeeze, use_pcp, use_intra_ffn, use_msp, downsample, num_classes, pretrained,
                                     weights_file)))
    shared.model = gr.State(None)
    shared.pinned = gr.State([])
    shared.build_fields = fields
    results = [summary, stages, scales, params, diagram, diagram_files]

    def on_build(*values: Any) -> tuple:
        return run_build(context, dict(zip(BUILD_FIELDS, values)))

    shared.build_event = dict(fn=tab_action(context, "Build", on_build, BUILD_FIELDS), inputs=list(fields.values()),
                              outputs=[status, *results, shared.model])
    wire(context, "Build", build.click, on_build, list(fields.values()), status, results, "building",
         api_name="build", extra_outputs=[shared.model], arg_names=BUILD_FIELDS)
    for field in fields.values():  # changed inputs: the shown model is no longer what the form says
        field.change(lambda: ("*Settings changed: press Build.*", None, *([None] * len(results))), None,
                     [status, shared.model, *results], queue=False)
    pin_event = pin_button.click(tab_action(context, "Build", pin), [shared.pinned, shared.model],
                                 [shared.pinned, pinned_note, status], api_name="pin")
    pin_event.failure(failure_status(context, "Build"), None, [status], queue=False)
    unpin.click(lambda: ([], pinned_text([]), "Cleared the pinned configurations."), None,
                [shared.pinned, pinned_note, status], queue=False)
