"""Profile (per-component FLOPs and parameters, optionally memory: the paper's Table 1) and latency
(per-component time beside FLOPs and bytes moved)."""
from __future__ import annotations

from mscsa_lab.io.numbers import format_number
from mscsa_lab.stopping import StopFlag
from mscsa_lab.workflows.limits import ResourceLimits, guard
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.spec import ModelSpec
from mscsa_lab.workflows.store import ModelStore, obtain_model, read_model

__all__ = ["profile_action", "latency_action", "LEVELS"]

LEVELS = (0, 1, 2)  # 0 top-level parts, 1 with sub-parts, 2 with per-scale K/V


def profile_action(spec: ModelSpec, *, convention: str = "mac", level: int = 2, memory: bool = False,
                   batch: int = 1, training: bool = False, store: ModelStore | None = None,
                   limits: ResourceLimits | None = None) -> ActionResult:
    """FLOPs (per image) and parameters of every component; with ``memory``, parameter/activation memory
    per component at ``batch`` beside them (a training step's, with AdamW, when ``training``)."""
    from mscsa_lab.analysis.known_costs import known_profile_report
    from mscsa_lab.analysis.memory import memory_profile
    from mscsa_lab.analysis.merge import merge_with_profile
    from mscsa_lab.analysis.profiler import profile_model
    from mscsa_lab.io.figures import plot_component_breakdown

    guard(spec, limits, keeps_activations=True)  # FLOPs counting holds every activation
    if memory:
        # the memory profile works on its own copy of the model
        guard(spec, limits, batch=batch, training=training, keeps_activations=True, copies=2)
    height, width = spec.input_size
    name = f"{spec.label} + MSCSA"
    # A profile as shipped at 224x224 has its fvcore count in the shipped table: no model, no trace.
    report = known_profile_report(spec, name)
    profiled = None
    if report is None or memory:
        # Counting and the memory profile only read the model (one eval-mode pass each, hooks removed after): the
        # stored model itself, not a copy (copying CoaT-S took 0.4 s of a 3 s request).
        with read_model(spec, store) as model:
            report = report or profile_model(model, spec.input_size, name=name)
            profiled = memory_profile(model, spec.input_size, batch_size=batch, training=training,
                                      name=name) if memory else None
    table = report.to_table(convention)
    title = f"Per-component FLOPs and parameters of {spec.label} + MSCSA ({spec.task}, {height}x{width})"
    table.metadata = {**table.metadata, "flops_per": "image (batch 1)"}
    tables = {}
    if profiled is not None:
        table.frame = merge_with_profile(table.frame, profiled.to_frame())
        table.notes += profiled.notes()
        totals = profiled.totals_table()
        tables["memory_totals"] = totals
        table.notes.append("Totals (MiB): " + "; ".join(f"{row['Quantity']} {format_number(row['Computed MiB'])}"
                                                        for _, row in totals.frame.iterrows()))
        table.metadata = {**table.metadata, "memory_batch": batch, "memory_training": bool(training)}
        title += f", memory at batch {batch} ({'training step, AdamW' if training else 'inference'})"
        table.paper_columns = [c for c in ("Component", "FLOPs (G)", "Params (M)", "Activations MiB",
                                           "Training MiB" if training else "Output MiB") if c in table.frame.columns]
    table.metadata.pop("batch", None)  # FLOPs are per image; the memory batch is named as such
    table.frame = table.frame[table.frame["Level"] <= int(level)].reset_index(drop=True)
    table.title = title
    figure = plot_component_breakdown(table.frame, title, mscsa_only=True)
    return ActionResult(title=title, table=table, tables=tables, figures={"shares": figure},
                        data={"total_flops": report.total_flops, "total_params": report.total_params})


def latency_action(spec: ModelSpec, settings, *, store: ModelStore | None = None,
                   limits: ResourceLimits | None = None, stop: StopFlag = None) -> ActionResult:
    """Where the time goes: per-component latency (``settings``: a ``bench.settings.BenchmarkSettings``)
    beside the component's FLOPs share, bytes moved and arithmetic intensity. One FLOPs count serves both."""
    from mscsa_lab.analysis.merge import merge_with_latency
    from mscsa_lab.analysis.profiler import profile_model
    from mscsa_lab.analysis.traffic import traffic_profile
    from mscsa_lab.bench.latency import component_latency
    from mscsa_lab.io.figures import plot_latency
    from mscsa_lab.stopping import Cancelled, should_stop

    settings = settings.validate()
    guard(spec, limits, batch=settings.batch, copies=2 if store is not None else 1)
    model = obtain_model(spec, store)
    report = profile_model(model, spec.input_size, name=f"{spec.label} + MSCSA")
    if should_stop(stop):
        raise Cancelled("the latency measurement was cancelled")
    latency = component_latency(model, spec.input_size, settings, name=f"{spec.label} + MSCSA",
                                flops_report=report).to_table()
    traffic = traffic_profile(model, spec.input_size, batch_size=settings.batch, flops_report=report)
    latency.frame = merge_with_latency(latency.frame, traffic.to_frame())
    latency.notes.append("Bytes moved: module inputs + outputs + parameters per forward pass (eager: every "
                         "operator's reads and writes); intensity = FLOPs / bytes moved.")
    figure = plot_latency(latency.frame, latency.title)
    return ActionResult(title=latency.title, table=latency, figures={"latency": figure})
