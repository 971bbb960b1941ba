"""Throughput of backbones with and without MSCSA, measured interleaved in one run (Table 6's FPS).

Each backbone alone, +MSCSA (reference modules) and +MSCSA on the fast path run A B C, C B A, ...
through ``bench.fps.compare_fps``; beside the FPS stand the 95% intervals of every FPS and ratio,
the FPS change that FLOPs alone would predict, MSCSA's share of FLOPs (from the same models,
``analysis.compare``) and of runtime, and the paper's A100 FPS drop where it reports one.

A result that cannot be true (MSCSA only adds work, so +MSCSA faster than its backbone; the fast
path, which only folds BN and fuses projections, slower than the reference modules) is marked in
the ``Check`` column as noise rather than printed as a finding.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import pandas as pd

from mscsa_lab.analysis.compare import (
    Configuration,
    as_configuration,
    build_pair,
    comparison_table,
    measure_built_pair,
    relative_change,
)
from mscsa_lab.bench.fps import compare_fps
from mscsa_lab.bench.settings import BenchmarkSettings
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.fast import make_fast
from mscsa_lab.presets import Profile
from mscsa_lab.registry import parse_input_size
from mscsa_lab.stopping import StopFlag

__all__ = ["throughput_comparison", "compare_with_fps"]


def throughput_comparison(
    names: Iterable[str | Profile | Configuration],
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    task: str = "classification",
    fast: bool = True,
    progress: Callable[[float, str], None] | None = None,
    stop: StopFlag = None,
) -> ResultTable:
    """FPS of each backbone alone, with MSCSA (reference modules) and with MSCSA on the fast path,
    measured interleaved in one run; beside them MSCSA's share of FLOPs and of runtime, and the
    paper's FPS drop (A100) where it reports one."""
    settings = (settings or BenchmarkSettings()).validate()
    size = parse_input_size(*input_size)
    names = list(names)
    rows, notes, warnings, device = [], [], [], ""
    nan = float("nan")
    mixed = len({as_configuration(name).input_size or size for name in names}) > 1
    for index, name in enumerate(names):
        started = time.perf_counter()  # the time cap covers building and counting too
        entry = as_configuration(name)
        entry_size, entry_task = entry.input_size or size, entry.task or task
        label, profile, base, model = build_pair(entry.name, entry_size, entry_task, **entry.settings_dict)
        label = entry.label or label
        pair = measure_built_pair(label, profile, base, model, entry_size, entry_task, modified=entry.modified)
        models = {"backbone": base, "+MSCSA": model}
        if fast:
            models["+MSCSA fast"] = make_fast(model, channels_last=settings.channels_last)
        if settings.compile:  # torch.compile'd copies timed beside the eager models, in the same rounds
            models.update({"backbone compiled": base, "+MSCSA compiled": model})

        def report(fraction: float, message: str, index: int = index, label: str = label) -> None:
            if progress is not None:
                progress((index + fraction) / len(names), f"{label}: {message}")

        result = compare_fps(models, entry_size, settings, progress=report, stop=stop, started=started,
                             compiled=[name for name in models if name.endswith(" compiled")])
        device = result.results["backbone"].device
        for key, fps_result in result.results.items():
            notes += [f"{label} {key}: {note}" for note in fps_result.notes]
        fps = {key: r.fps_median for key, r in result.results.items()}
        step = {key: r.step_ms for key, r in result.results.items()}
        best = "+MSCSA fast" if fast else "+MSCSA"
        ratio = result.ratio_interval("+MSCSA")
        ratio_fast = result.ratio_interval("+MSCSA fast") if fast else None
        drop = 100.0 * (result.ratio(best) - 1.0)
        paper_drop = relative_change(pair.paper.get("fps_mscsa"), pair.paper.get("fps"))
        checks = _checks(result, fast)
        warnings += [f"{label}: {warning}" for warning in result.warnings]
        rows.append({
            "Model": label,
            **({"Input": f"{entry_size[0]}x{entry_size[1]}"} if mixed else {}),
            "Batch": result.results["backbone"].batch,
            "FPS": fps["backbone"],
            "FPS low": result.results["backbone"].fps_interval.low,
            "FPS high": result.results["backbone"].fps_interval.high,
            "+MSCSA FPS": fps["+MSCSA"],
            "+MSCSA FPS low": result.results["+MSCSA"].fps_interval.low,
            "+MSCSA FPS high": result.results["+MSCSA"].fps_interval.high,
            "dFPS (%)": 100.0 * (ratio.median - 1.0),
            "dFPS low (%)": 100.0 * (ratio.low - 1.0),
            "dFPS high (%)": 100.0 * (ratio.high - 1.0),
            "+MSCSA fast FPS": fps.get("+MSCSA fast", nan),
            "dFPS fast (%)": 100.0 * (ratio_fast.median - 1.0) if ratio_fast else nan,
            "dFPS fast low (%)": 100.0 * (ratio_fast.low - 1.0) if ratio_fast else nan,
            "dFPS fast high (%)": 100.0 * (ratio_fast.high - 1.0) if ratio_fast else nan,
            "FLOPs-proportional dFPS (%)": 100.0 * (pair.flops / pair.flops_mscsa - 1.0),
            "Step (ms)": step["backbone"],
            "+MSCSA step (ms)": step["+MSCSA"],
            "+MSCSA fast step (ms)": step.get("+MSCSA fast", nan),
            "MSCSA share of FLOPs (%)": 100.0 * (pair.flops_mscsa - pair.flops) / pair.flops_mscsa,
            "MSCSA share of runtime (%)": -drop,
            "Paper dFPS (%)": paper_drop,
            # Said only of a finding: a row that is noise or impossible is no evidence either way.
            "Smaller drop than paper": ("yes" if drop > paper_drop else "no")
            if paper_drop == paper_drop and not checks else "-",
            "Rounds": result.rounds,
            "Check": "; ".join(checks) if checks else "ok",
        })
        if settings.compile:
            compiled = result.pair_interval("+MSCSA compiled", "backbone compiled")
            rows[-1].update({
                "Compiled FPS": fps["backbone compiled"], "+MSCSA compiled FPS": fps["+MSCSA compiled"],
                "dFPS compiled (%)": 100.0 * (compiled.median - 1.0),
                "dFPS compiled low (%)": 100.0 * (compiled.low - 1.0),
                "dFPS compiled high (%)": 100.0 * (compiled.high - 1.0),
                "Compile (s)": result.results["backbone compiled"].compile_s,
                "+MSCSA compile (s)": result.results["+MSCSA compiled"].compile_s,
            })
    height, width = size
    rounds = (f"{settings.repeats} to {settings.max_repeats} rounds, until every ratio's 95% interval is within "
              f"+-{100 * settings.target_interval:.1f}% or {settings.max_seconds:.0f} s" if settings.adaptive
              else f"{settings.repeats} rounds")
    notes = [
        f"FPS: median over rounds ({rounds}); models measured interleaved in one run; d = relative change vs the "
        "backbone (median of per-round ratios). low/high: distribution-free 95% interval of the median.",
        "FLOPs-proportional dFPS: the change if time followed FLOPs (backbone FLOPs / +MSCSA FLOPs - 1).",
        "Check: 'ok', or why a row is not a finding (interval too wide, a result that cannot be true, a busy machine).",
        "MSCSA share of runtime = 1 - FPS(+MSCSA) / FPS(backbone), for the fast path when measured.",
        "Paper dFPS: Table 6 of Shang et al. (2023), one NVIDIA A100.",
    ] + (["Compiled: torch.compile'd copies of the same models, timed in the same rounds; compile time (the "
          "first call) is reported apart and is not in the FPS."] if settings.compile else []) \
        + [f"warning: {w}" for w in warnings] + notes
    metadata = run_metadata(input_size=f"{height}x{width}", batch=settings.batch, task=task, precision=settings.precision,
                            channels_last=settings.channels_last, compile=settings.compile, warmup=settings.warmup,
                            steps=settings.steps, repeats=settings.repeats, max_repeats=settings.max_repeats,
                            target_interval=settings.target_interval, max_seconds=settings.max_seconds,
                            warnings=warnings, device=device)
    table = ResultTable(f"Throughput with and without MSCSA ({task}, {height}x{width}, {device})",
                        pd.DataFrame(rows), metadata, notes,
                        ["Model", "FPS", "+MSCSA FPS", "dFPS (%)", "dFPS low (%)", "dFPS high (%)"])
    table.compact_columns = ["Model", "Input", "FPS", "+MSCSA FPS", "dFPS (%)", "dFPS low (%)", "dFPS high (%)",
                             "+MSCSA fast FPS", "dFPS fast (%)", "dFPS compiled (%)", "Rounds", "Check"]
    return table


def _checks(result, fast: bool) -> list[str]:
    """Why a row's figures are not findings; empty when nothing is wrong. The spread quoted is the warnings'
    own (``ABResult.widest_half_width``), so the table and the warnings say the same."""
    checks = []
    if result.ratio("+MSCSA") > 1.0 or (fast and result.ratio("+MSCSA fast") > 1.0):
        checks.append("impossible: +MSCSA faster than the backbone it adds work to (noise)")
    if fast:
        fast_over_reference = result.pair_interval("+MSCSA fast", "+MSCSA")
        if fast_over_reference.high < 1.0:
            checks.append("unexpected: the fast path slower than the reference modules (noise or a slow kernel)")
    if not result.stable:
        checks.append(f"interval +-{100 * result.widest_half_width():.1f}%: not stable")
    if any(w.startswith("machine busy") for w in result.warnings):
        checks.append("busy machine")
    return checks


def compare_with_fps(
    names: Iterable[str | Profile | Configuration],
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    task: str = "classification",
    convention: str = "mac",
    progress: Callable[[float, str], None] | None = None,
    stop: StopFlag = None,
) -> ResultTable:
    """The Table 6 layout (FLOPs, parameters, the paper beside) with measured FPS: each backbone and
    its +MSCSA model timed interleaved, dFPS with its 95% interval and the FLOPs-proportional dFPS.
    ``stop`` ends the measurement within one timed block (``Cancelled``)."""
    settings = (settings or BenchmarkSettings()).validate()
    size = parse_input_size(*input_size)
    entries = [as_configuration(name) for name in names]
    pairs, warnings, device = [], [], ""
    for index, entry in enumerate(entries):
        started = time.perf_counter()
        entry_size, entry_task = entry.input_size or size, entry.task or task
        label, profile, base, model = build_pair(entry.name, entry_size, entry_task, **entry.settings_dict)
        label = entry.label or label
        if progress is not None:
            progress(index / len(entries), f"{label}: counting FLOPs")
        pair = measure_built_pair(label, profile, base, model, entry_size, entry_task, modified=entry.modified)

        def report(fraction: float, message: str, index: int = index, label: str = label) -> None:
            if progress is not None:
                progress((index + fraction) / len(entries), f"{label}: {message}")

        result = compare_fps({"backbone": base, "+MSCSA": model}, entry_size, settings, progress=report, stop=stop,
                             started=started)
        device = result.results["backbone"].device
        interval = result.ratio_interval("+MSCSA")
        pair.fps, pair.fps_mscsa = result.results["backbone"].fps_median, result.results["+MSCSA"].fps_median
        pair.dfps_interval = (100.0 * (interval.low - 1.0), 100.0 * (interval.high - 1.0))
        warnings += [f"{label}: {w}" for w in result.warnings]
        if interval.low > 1.0:
            warnings.append(f"{label}: impossible: +MSCSA measured faster than its backbone (noise)")
        pairs.append(pair)
    table = comparison_table(pairs, size, task, convention=convention,
                             extra_metadata=dict(device=device, fps_batch=settings.batch, fps_steps=settings.steps,
                                                 fps_rounds=f"{settings.repeats}-{settings.max_repeats or settings.repeats}",
                                                 fps_seconds_per_model=settings.max_seconds, warnings=warnings))
    table.notes += ["FPS: measured here (" + device + f"), backbone and +MSCSA interleaved, at most "
                    f"{settings.max_seconds:g} s per model; dFPS low/high: 95% interval of the median per-round ratio; "
                    "FLOPs-proportional dFPS: the change if time followed FLOPs."]
    table.notes += [f"warning: {w}" for w in warnings]
    return table
