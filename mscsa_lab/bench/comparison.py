"""Throughput of backbones with and without MSCSA, measured interleaved in one run (Table 6's FPS).

Each backbone alone, +MSCSA (reference modules) and +MSCSA on the fast path run A B C, C B A, ...
through ``bench.fps.compare_fps``; beside the FPS stand MSCSA's share of FLOPs (from the same
models, ``analysis.compare``) and of runtime, and the paper's A100 FPS drop where it reports one.
"""
from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd

from mscsa_lab.analysis.compare import build_pair, measure_built_pair, relative_change
from mscsa_lab.bench.fps import compare_fps
from mscsa_lab.bench.settings import BenchmarkSettings
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.fast import make_fast
from mscsa_lab.presets import Profile
from mscsa_lab.registry import parse_input_size

__all__ = ["throughput_comparison"]


def throughput_comparison(
    names: Iterable[str | Profile],
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    task: str = "classification",
    fast: bool = True,
    progress: Callable[[float, str], None] | None = None,
) -> ResultTable:
    """FPS of each backbone alone, with MSCSA (reference modules) and with MSCSA on the fast path,
    measured interleaved in one run; beside them MSCSA's share of FLOPs and of runtime, and the
    paper's FPS drop (A100) where it reports one."""
    settings = (settings or BenchmarkSettings()).validate()
    size = parse_input_size(*input_size)
    names = list(names)
    rows, notes, device = [], [], ""
    nan = float("nan")
    for index, name in enumerate(names):
        label, profile, base, model = build_pair(name, size, task)
        pair = measure_built_pair(label, profile, base, model, size, task)
        models = {"backbone": base, "+MSCSA": model}
        if fast:
            models["+MSCSA fast"] = make_fast(model, channels_last=settings.channels_last)

        def report(fraction: float, message: str, index: int = index, label: str = label) -> None:
            if progress is not None:
                progress((index + fraction) / len(names), f"{label}: {message}")

        result = compare_fps(models, size, settings, progress=report)
        device = result.results["backbone"].device
        for key, fps_result in result.results.items():
            notes += [f"{label} {key}: {note}" for note in fps_result.notes]
        fps = {key: r.fps_median for key, r in result.results.items()}
        step = {key: r.step_ms for key, r in result.results.items()}
        best = "+MSCSA fast" if fast else "+MSCSA"
        drop = 100.0 * (result.ratio(best) - 1.0)
        paper_drop = relative_change(pair.paper.get("fps_mscsa"), pair.paper.get("fps"))
        rows.append({
            "Model": label,
            "Batch": result.results["backbone"].batch,
            "FPS": fps["backbone"],
            "+MSCSA FPS": fps["+MSCSA"],
            "dFPS (%)": 100.0 * (result.ratio("+MSCSA") - 1.0),
            "+MSCSA fast FPS": fps.get("+MSCSA fast", nan),
            "dFPS fast (%)": 100.0 * (result.ratio("+MSCSA fast") - 1.0) if fast else nan,
            "Step (ms)": step["backbone"],
            "+MSCSA step (ms)": step["+MSCSA"],
            "+MSCSA fast step (ms)": step.get("+MSCSA fast", nan),
            "MSCSA share of FLOPs (%)": 100.0 * (pair.flops_mscsa - pair.flops) / pair.flops_mscsa,
            "MSCSA share of runtime (%)": -drop,
            "Paper dFPS (%)": paper_drop,
            "Drop below paper": ("yes" if drop > paper_drop else "no") if paper_drop == paper_drop else "-",
        })
    height, width = size
    notes = [
        "FPS: median over repeats; models measured interleaved in one run; d = relative change vs the backbone "
        "(median of per-round ratios).",
        "MSCSA share of runtime = 1 - FPS(+MSCSA) / FPS(backbone), for the fast path when measured.",
        "Paper dFPS: Table 6 of Shang et al. (2023), one NVIDIA A100.",
    ] + notes
    metadata = run_metadata(input_size=f"{height}x{width}", batch=settings.batch, task=task, precision=settings.precision,
                            channels_last=settings.channels_last, compile=settings.compile, warmup=settings.warmup,
                            steps=settings.steps, repeats=settings.repeats, device=device)
    return ResultTable(f"Throughput with and without MSCSA ({task}, {height}x{width}, {device})",
                       pd.DataFrame(rows), metadata, notes)
