"""Where the time goes: per-component latency beside each component's share of FLOPs.

Forward hooks stamp the start and end of every named component (``components.model_components``):
CUDA events on the GPU, ``perf_counter`` on the CPU. A component whose share of time is larger than
its share of FLOPs is limited by memory traffic or kernel launches rather than arithmetic, which is
what the paper blames for MSCSA's runtime overhead.
"""
from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from mscsa_lab.bench.settings import BenchmarkSettings, benchmark_context, resolve_device
from mscsa_lab.analysis.components import component_total, model_components
from mscsa_lab.analysis.tracker import ModuleTracker, example_input
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.mscsa_net import MSCSANet
from mscsa_lab.analysis.profiler import ProfileReport, profile_model

__all__ = ["LatencyReport", "component_latency"]


@dataclass
class LatencyReport:
    model: str
    frame: pd.DataFrame
    step_ms: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_table(self) -> ResultTable:
        notes = [
            "Time share = component time / whole forward pass; FLOPs share from the profiler (fvcore).",
            "time/FLOPs > 1: the component costs more time than its arithmetic suggests (memory traffic, "
            "kernel launches, Python overhead).",
        ]
        keep = [c for c in ("Component", "Time (ms)", "Time share (%)", "FLOPs share (%)") if c in self.frame.columns]
        table = ResultTable(f"Per-component latency: {self.model}", self.frame, self.metadata, notes, keep or None)
        table.compact_columns = ["Component", "Time (ms)", "Time share (%)", "FLOPs share (%)", "time/FLOPs",
                                 "Intensity (FLOPs/byte)", "Eager bandwidth (GiB/s)"]
        return table


class _Stopwatch:
    """Start/stop stamps per module path, accumulated over the recorded steps: a listener pair on the
    project's measurement engine (``analysis.tracker.ModuleTracker``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.recording = False
        self.open: dict[str, Any] = {}
        self.pairs: dict[str, list[tuple[Any, Any]]] = defaultdict(list)

    def _stamp(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def enter(self, path: str, module: Any, args: tuple) -> None:
        if self.recording:
            self.open[path] = self._stamp()

    def leave(self, path: str, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.recording and path in self.open:
            self.pairs[path].append((self.open.pop(path), self._stamp()))

    def seconds(self, path: str) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return sum(start.elapsed_time(end) for start, end in self.pairs.get(path, ())) / 1000.0
        return sum(end - start for start, end in self.pairs.get(path, ()))


def component_latency(
    model: MSCSANet,
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    name: str | None = None,
    max_level: int = 1,
    flops_report: ProfileReport | None = None,
) -> LatencyReport:
    """Median-free per-component latency: the mean time per forward pass of each component over
    ``settings.steps * settings.repeats`` recorded steps, after ``settings.warmup`` unrecorded ones.
    ``flops_report``: this model's ``profile_model`` report at ``input_size``, when the caller has it."""
    settings = (settings or BenchmarkSettings()).validate()
    device = resolve_device(settings.device)
    report = flops_report or profile_model(model, input_size)
    # profile_model's rows follow model_components' order one to one (names repeat across CSAs).
    all_components = model_components(model)
    share_of = {id(c): 100.0 * row.flops / report.total_flops for c, row in zip(all_components, report.rows)}
    components = [c for c in all_components if c.level <= max_level]
    model = copy.deepcopy(model).eval().to(device)  # the caller's model keeps its device and layout
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    if settings.channels_last:
        model = model.to(memory_format=memory_format)
    paths = {""}
    for component in components:
        paths.update(component.modules + component.children + ((component.residual_of,) if component.residual_of else ()))
    stopwatch = _Stopwatch(device)
    height, width = input_size
    x = example_input(model, (height, width), settings.batch, device, random=True).contiguous(memory_format=memory_format)
    recorded_steps = settings.steps * settings.repeats
    with ModuleTracker(model, paths) as tracker, benchmark_context(settings, device):
        tracker.on_enter.append(stopwatch.enter)
        tracker.on_leave.append(stopwatch.leave)
        for _ in range(settings.warmup):
            model(x)
        stopwatch.recording = True
        for _ in range(recorded_steps):
            model(x)
        stopwatch.recording = False

    def seconds_per_step(path: str) -> float:
        return stopwatch.seconds(path) / recorded_steps

    step = seconds_per_step("")
    per_path = {path: seconds_per_step(path) for path in paths}
    rows = []
    for component in components:
        seconds = component_total(component, per_path)
        flops_share = share_of.get(id(component), float("nan"))
        time_share = 100.0 * seconds / step if step else float("nan")
        rows.append({
            "Component": component.name,
            "Level": component.level,
            "Group": component.group,
            "Time (ms)": 1000.0 * seconds,
            "Time share (%)": time_share,
            "FLOPs share (%)": flops_share,
            "time/FLOPs": time_share / flops_share if flops_share else float("nan"),
        })
    level0 = sum(r["Time (ms)"] for r in rows if r["Level"] == 0)
    rows.append({"Component": "outside named parts (glue)", "Level": 0, "Group": "other",
                 "Time (ms)": 1000.0 * step - level0, "Time share (%)": 100.0 - 100.0 * level0 / (1000.0 * step),
                 "FLOPs share (%)": float("nan"), "time/FLOPs": float("nan")})
    label = name or f"{model.backbone.name} + MSCSA"
    metadata = run_metadata(model=label, input_size=f"{height}x{width}", batch=settings.batch,
                            precision=settings.precision, channels_last=settings.channels_last,
                            recorded_steps=recorded_steps, device_type=str(device))
    return LatencyReport(label, pd.DataFrame(rows), 1000.0 * step, metadata)
