"""Benchmark tab: FPS with and without MSCSA, interleaved, with intervals and checks; per-component
latency with bytes moved; one benchmark at a time, stopped when its request is cancelled."""
from __future__ import annotations

import time
from typing import Any, Iterator

import gradio as gr

from mscsa_lab.io.export import export_stem
from mscsa_lab.models.config import ConfigError
from mscsa_lab.workflows.timing import benchmark_action
from webapp.actions import cancellable, wire
from webapp.context import AppContext
from webapp.forms import blank, number, whole
from webapp.tabs import Shared, TableView, profile_choices, show_frame

__all__ = ["render", "benchmark_request", "device_note", "MAX_ROUNDS"]

MAX_ROUNDS = 40
RESULTS = 8  # title, FPS table (shown, kept), FPS chart, latency table (shown, kept), latency chart, files


def device_note() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU available: {torch.cuda.get_device_name(0)}."
    return (f"No GPU on this machine: benchmarks run on the CPU ({torch.get_num_threads()} threads). "
            "CPU figures are not comparable with the paper's A100 FPS.")


def benchmark_request(context: AppContext, names: Any, device: str, precision: str, batch: Any, channels_last: bool,
                      steps: Any, repeats: Any, size: Any, latency_of: str | None, include_build: bool,
                      max_seconds: Any, spec: Any):
    """(entries, settings, input size, latency model) from the form, every number checked by name."""
    from mscsa_lab.bench.settings import BenchmarkSettings, resolve_device
    from mscsa_lab.registry import parse_input_size

    entries: list[Any] = [n.strip() for n in (names or []) if n and str(n).strip()]
    if include_build:
        if spec is None:
            raise ConfigError("build a model in the Build tab first, or untick 'Include the Build tab's model'")
        entries.append(spec)
    if not entries:
        raise ConfigError("pick at least one backbone to benchmark (or include the Build tab's model)")
    resolve_device(device)
    # No low ceiling here: the server's limits below say which flag raises them.
    counts = {name: whole(name, value, 1, 10**12) for name, value in (("batch", batch), ("steps", steps),
                                                                     ("repeats", repeats))}
    if blank(max_seconds) or not 1 <= number("time cap", max_seconds) <= 3600:
        raise ConfigError(f"time cap must be a number of seconds from 1 to 3600, got {str(max_seconds)[:40]!r}")
    limits = context.limits
    limits.check_count("steps per timed block", counts["steps"], "max_steps")
    limits.check_count("rounds", counts["repeats"], "max_repeats")
    settings = BenchmarkSettings(device=device, precision=precision, channels_last=bool(channels_last), warmup=2,
                                 max_repeats=max(MAX_ROUNDS, counts["repeats"]), target_interval=0.02,
                                 max_seconds=float(number("time cap", max_seconds)), **counts)
    return entries, settings, parse_input_size(size, size), (latency_of or None)


def run_benchmark(context: AppContext, *values: Any, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
    started = time.perf_counter()
    entries, settings, size, latency_of = benchmark_request(context, *values)

    def work(stop, report):
        return benchmark_action(entries, settings, input_size=size, latency_of=latency_of, progress=report, stop=stop,
                                limits=context.limits)

    for result in cancellable(work, progress):
        if result is None:
            yield tuple(gr.update() for _ in range(RESULTS + 1))
            continue
        labels = [getattr(e, "label", e) for e in entries]
        files = result.write_all(context.output_dir("benchmark"), export_stem("fps", labels, "classification", size))
        warnings = result.warnings
        title = (f"### {result.title}\n\n" + ("**Warnings** (these figures are not findings):\n"
                                             + "\n".join(f"- {w}" for w in warnings) if warnings
                                             else "Every ratio's 95% interval met the target; no warnings."))
        status = f"Benchmarked {len(entries)} model(s) in {time.perf_counter() - started:.0f} s."
        latency = result.tables.get("latency")
        yield (status, title, show_frame(result.table), result.table, result.figures.get("fps"),
               show_frame(latency), latency, result.figures.get("latency"), [str(f) for f in files])


def render(context: AppContext, shared: Shared) -> None:
    gr.Markdown(device_note(), elem_id="device-note")
    with gr.Row():
        names = gr.Dropdown(profile_choices(True), value=["pvt_v2_b0"], multiselect=True,
                            label="Backbones (profiles, or type a timm name)", allow_custom_value=True,
                            elem_id="bench-names")
        include_build = gr.Checkbox(False, label="Include the Build tab's model", elem_id="bench-build")
        device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label="Device")
        precision = gr.Radio(["fp32", "tf32", "fp16", "bf16"], value="fp32", label="Precision")
    with gr.Row():
        batch = gr.Number(8, label="Batch", precision=0, elem_id="bench-batch")
        channels_last = gr.Checkbox(False, label="channels_last")
        steps = gr.Number(3, label="Steps per timed block", precision=0, elem_id="bench-steps")
        repeats = gr.Number(6, label="Least rounds (more until the ratio is known to +-2%)", precision=0, elem_id="bench-repeats")
        cap = gr.Number(60, label="Time cap per backbone (s)", precision=0, elem_id="bench-cap")
        size = gr.Number(224, label="Input size", precision=0, elem_id="bench-size")
        latency_of = gr.Dropdown([("none", "")] + profile_choices(True), value="", label="Per-component latency of")
    button = gr.Button("Run benchmark", variant="primary", elem_id="bench-button")
    status = gr.Markdown(elem_id="bench-status")
    title = gr.Markdown(elem_id="bench-title")
    table = TableView("FPS with and without MSCSA (measured interleaved; low/high: 95% interval)", "bench-table")
    plot = gr.Plot(label="FPS change", elem_id="bench-plot")
    latency_table = TableView("Per-component latency", "latency-table")
    latency_plot = gr.Plot(label="Share of time vs share of FLOPs", elem_id="latency-plot")
    files = gr.File(label="Downloads", file_count="multiple", elem_id="bench-files")

    def on_benchmark(names, device, precision, batch, channels_last, steps, repeats, size, latency_of,
                     include_build, max_seconds, spec, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        yield from run_benchmark(context, names, device, precision, batch, channels_last, steps, repeats, size,
                                 latency_of, include_build, max_seconds, spec, progress=progress)

    event = wire(context, "Benchmark", button.click, on_benchmark,
                 [names, device, precision, batch, channels_last, steps, repeats, size, latency_of, include_build, cap,
                  shared.model], status, [title, *table.outputs, plot, *latency_table.outputs, latency_plot, files],
                 "benchmarking", api_name="benchmark", concurrency_limit=1, concurrency_id="benchmark")
    table.follow(event)
    latency_table.follow(event)
