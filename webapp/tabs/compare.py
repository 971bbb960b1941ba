"""Compare tab: backbones with and without MSCSA in the paper's Table 6 layout, beside the configurations
pinned in the Build tab; FPS measured interleaved on request."""
from __future__ import annotations

import time
from typing import Any, Iterator

import gradio as gr

from mscsa_lab.io.export import export_stem
from mscsa_lab.workflows.comparing import compare_action
from webapp.actions import cancellable, wire
from webapp.context import AppContext
from webapp.tabs import Shared, TableView, profile_choices, show_frame

__all__ = ["render", "run_compare"]


def run_compare(context: AppContext, names: Any, height: Any, width: Any, task: str, convention: str, fps: bool,
                include_pinned: bool, pinned: Any, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
    """Yields while the comparison runs (it can be cancelled), then (status, title, shown table, the table, chart,
    files, notes)."""
    from mscsa_lab.registry import parse_input_size

    started = time.perf_counter()
    entries: list[Any] = [n.strip() for n in (names or []) if n and str(n).strip()]
    entries += list(pinned or []) if include_pinned else []
    size = parse_input_size(height, width)

    def work(stop, report):
        return compare_action(entries, input_size=size, task=task, convention=convention, fps=bool(fps),
                              progress=report, stop=stop, limits=context.limits)

    for result in cancellable(work, progress):
        if result is None:
            yield tuple(gr.update() for _ in range(7))
            continue
        labels = [getattr(e, "label", e) for e in entries]
        files = result.write_all(context.output_dir("compare"), export_stem("compare", labels, task, size))
        table = result.table
        table.frame = table.frame.dropna(axis=1, how="all")  # e.g. the paper's columns for models it does not list
        notes = "\n".join(f"- {n}" for n in table.notes)
        status = f"Compared {len(entries)} model(s) in {time.perf_counter() - started:.0f} s."
        yield status, f"### {result.title}", show_frame(table), table, result.figure, [str(f) for f in files], notes


def render(context: AppContext, shared: Shared) -> None:
    with gr.Row():
        names = gr.Dropdown(profile_choices(True), value=["pvt_v2_b0", "pvt_v2_b1"], multiselect=True,
                            elem_id="compare-names", label="Backbones", allow_custom_value=True)
        height = gr.Number(224, label="Input height", precision=0, elem_id="compare-height")
        width = gr.Number(224, label="Input width", precision=0, elem_id="compare-width")
        task = gr.Radio(["classification", "dense", "segmentation"], value="classification",
                        label="Task (segmentation: TopFormer profiles only)")
        convention = gr.Radio(["mac", "2x"], value="mac", label="FLOPs convention")
    with gr.Row():
        fps = gr.Checkbox(False, label="Measure FPS too (interleaved, with 95% intervals; slower)", elem_id="compare-fps")
        include_pinned = gr.Checkbox(True, label="Include the configurations pinned in Build", elem_id="compare-pinned")
    button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    status = gr.Markdown(elem_id="compare-status")
    title = gr.Markdown(elem_id="compare-title")
    table = TableView("With and without MSCSA (paper's figures beside)", "compare-table")
    plot = gr.Plot(label="FLOPs", elem_id="compare-plot")
    files = gr.File(label="Downloads: CSV, Markdown, LaTeX, JSON, PNG, SVG", file_count="multiple",
                    elem_id="compare-files")
    notes = gr.Markdown(elem_id="compare-notes")

    def on_compare(names, height, width, task, convention, fps, include_pinned, pinned,
                   progress: gr.Progress = gr.Progress()):
        yield from run_compare(context, names, height, width, task, convention, fps, include_pinned, pinned, progress)

    event = wire(context, "Compare", button.click, on_compare,
                 [names, height, width, task, convention, fps, include_pinned, shared.pinned], status,
                 [title, *table.outputs, plot, files, notes], "comparing", api_name="compare")
    table.follow(event)
