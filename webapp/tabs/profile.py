"""Profile tab: per-component FLOPs and parameters of the Build tab's model (Table 1), memory per component
on request, every download format; and the FLOPs-budget helper, whose choice 'Apply to Build' builds."""
from __future__ import annotations

import json
import time
from fractions import Fraction
from typing import Any

import gradio as gr

from mscsa_lab.io.export import export_stem
from mscsa_lab.models.config import ConfigError
from mscsa_lab.workflows.comparing import budget_action
from mscsa_lab.workflows.profiling import profile_action
from mscsa_lab.workflows.spec import ModelSpec
from webapp.actions import failure_status, tab_action, wire
from webapp.context import AppContext
from webapp.forms import blank, number, whole
from webapp.tabs import Shared, TableView, profile_choices, result_frame, show_frame

__all__ = ["render", "run_profile", "run_budget", "budget_fields", "MEMORY_MAX_BATCH"]

MEMORY_MAX_BATCH = 256
BUDGET_FIELDS = ("profile", "backbone", "depth", "num_heads", "key_dim", "mlp_ratio", "squeeze_ratio")


def run_profile(context: AppContext, spec: ModelSpec | None, convention: str, level: Any, memory: bool,
                memory_batch: Any, training: bool) -> tuple:
    """(status, title, shown table, the table itself, figure, files, notes)."""
    started = time.perf_counter()
    if spec is None:
        raise ConfigError("build a model in the Build tab first")
    batch = whole("memory batch", memory_batch, 1, MEMORY_MAX_BATCH) if memory else 1
    result = profile_action(spec, convention=convention, level=int(level), memory=bool(memory), batch=batch,
                            training=bool(training), store=context.store, limits=context.limits)
    custom = "-custom" if spec.modified else ""
    files = result.write_all(context.output_dir("profile"), export_stem("profile", spec.name + custom, spec.task,
                                                                        spec.input_size))
    notes = "\n".join(f"- {note}" for note in result.all_notes())
    # the chart as the PNG just written (giving Gradio the figure drew it a third time)
    chart = next(str(f) for f in files if f.suffix == ".png")
    status = f"Profiled {spec.label} + MSCSA in {time.perf_counter() - started:.1f} s."
    return (status, f"### {result.title}", show_frame(result.table), result.table, chart,
            [str(f) for f in files], notes)


def run_budget(name: str, cap_percent: Any, height: Any, width: Any, task: str, limits: Any = None) -> tuple:
    """(status, message, chosen settings as JSON, candidates tried)."""
    from mscsa_lab.registry import parse_input_size

    if blank(cap_percent):
        raise ConfigError("give the cap as a percentage of the backbone's FLOPs, e.g. 10")
    cap = number("cap (%)", cap_percent)
    if not 0 < cap <= 1000:
        raise ConfigError(f"cap {str(cap_percent)[:40]}% is out of range: give a percentage of the backbone's FLOPs "
                          "above 0 and at most 1000, e.g. 10")
    started = time.perf_counter()
    result = budget_action((name or "").strip(), cap=cap / 100.0, input_size=parse_input_size(height, width),
                           task=task, limits=limits)
    status = f"Searched {len(result.table.frame)} configurations in {time.perf_counter() - started:.1f} s."
    return status, result.summary, result.data["config_json"], show_frame(result.table)


def budget_fields(name: str, chosen: str) -> dict[str, Any]:
    """The Build tab's fields for the budget helper's chosen settings (the "Apply to Build" button)."""
    from mscsa_lab.presets import list_profiles

    if not (chosen or "").strip():
        raise ConfigError("no settings to apply: run Fit first (and pick a cap the helper can meet)")
    try:
        config = json.loads(chosen)
    except ValueError:
        raise ConfigError("the chosen settings are not valid JSON: run Fit again") from None
    if not isinstance(config, dict):
        raise ConfigError("the chosen settings are not a set of MSCSA settings: run Fit again")
    profiles = {p.name for p in list_profiles()}
    squeeze = config.get("squeeze_ratio")
    return dict(profile=name if name in profiles else None, backbone="" if name in profiles else name,
                depth=str(config.get("depth", "")), num_heads=str(config.get("num_heads", "")),
                key_dim=str(config.get("key_dim", "")), mlp_ratio=str(config.get("mlp_ratio", "")),
                squeeze_ratio="none" if squeeze is None else _ratio_text(squeeze))


def _ratio_text(value: Any) -> str:
    try:
        fraction = Fraction(str(value)).limit_denominator(64)
    except (ValueError, ZeroDivisionError):
        return str(value)
    return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator != 1 else str(fraction.numerator)


def render(context: AppContext, shared: Shared) -> None:
    gr.Markdown("FLOPs and parameters of the model built in the Build tab, per component "
                "(1 multiply-add = 1 FLOP, as in the paper; attention matmuls included).")
    with gr.Row():
        convention = gr.Radio(["mac", "2x"], value="mac", label="FLOPs convention")
        level = gr.Radio([0, 1, 2], value=1, label="Detail level")
        memory = gr.Checkbox(False, label="Memory per component (activations, peak)", elem_id="profile-memory")
        memory_batch = gr.Number(1, label="Memory at batch", precision=0, elem_id="profile-batch")
        memory_training = gr.Checkbox(False, label="for a training step (AdamW)", elem_id="profile-training")
        run = gr.Button("Profile", variant="primary", elem_id="profile-button")
    status = gr.Markdown(elem_id="profile-status")
    title = gr.Markdown(elem_id="profile-title")
    table = TableView("Per-component cost", "profile-table")
    plot = gr.Image(label="Shares of the MSCSA parts", type="filepath", interactive=False, elem_id="profile-plot")
    files = gr.File(label="Downloads", file_count="multiple", elem_id="profile-files")
    notes = gr.Markdown(elem_id="profile-notes")
    results = [title, *table.outputs, plot, files, notes]
    event = wire(context, "Profile", run.click, lambda spec, conv, lev, mem, batch, train: run_profile(
        context, spec, conv, lev, mem, batch, train), [shared.model, convention, level, memory, memory_batch,
                                                       memory_training], status, results, "profiling",
         api_name="profile", arg_names=("spec", "convention", "level", "memory", "memory_batch", "training"))
    table.follow(event)
    shared.model.change(lambda: (None,) * len(results), None, results, queue=False)

    gr.Markdown("### FLOPs budget\nThe configuration whose added FLOPs come closest to the cap.")
    with gr.Row():
        name = gr.Dropdown(profile_choices(True), value="pvt_v2_b1", label="Backbone", allow_custom_value=True,
                           elem_id="budget-name")
        cap = gr.Number(10, label="Cap (% of the backbone's FLOPs)", elem_id="budget-cap")
        fit = gr.Button("Fit", elem_id="budget-button")
    budget_status = gr.Markdown(elem_id="budget-status")
    message = gr.Markdown(elem_id="budget-message")
    config = gr.Code(language="json", label="Chosen settings", elem_id="budget-config")
    apply = gr.Button("Apply to Build (and build it)", elem_id="budget-apply")
    candidates = result_frame("Candidates tried", "budget-table")
    fields = shared.build_fields
    def on_fit(name: str, cap: Any, height: Any, width: Any, task: str) -> tuple:
        return run_budget(name, cap, height, width, task, context.limits)

    wire(context, "Budget", fit.click, on_fit, [name, cap, fields["height"], fields["width"], fields["task"]],
         budget_status, [message, config, candidates], "searching", api_name="budget")

    def on_apply(chosen_name: str, chosen: str) -> tuple:
        values = budget_fields(chosen_name, chosen)
        updates = [values[key] if values[key] is not None else gr.update() for key in BUDGET_FIELDS]
        return (*updates, f"Applied the budget's settings for {chosen_name} to the Build tab; building...")

    event = apply.click(tab_action(context, "Budget", on_apply), [name, config],
                        [fields[key] for key in BUDGET_FIELDS] + [budget_status], api_name="budget_apply")
    event.failure(failure_status(context, "Budget"), None, [budget_status], queue=False)
    event.success(**shared.build_event)
