"""Compare (backbones with and without MSCSA: the paper's Table 6), the FLOPs-budget fit, the list of
profiles and the conversion of a saved table."""
from __future__ import annotations

import json
from typing import Callable, Sequence

import pandas as pd

from mscsa_lab.errors import UserError
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.stopping import StopFlag
from mscsa_lab.workflows.limits import DEFAULT_LIMITS, ResourceLimits, guard
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.spec import ModelSpec
from mscsa_lab.workflows.timing import comparison_entries

__all__ = ["compare_action", "budget_action", "profiles_action", "export_table_action", "BudgetError"]

Progress = Callable[[float, str], None]


class BudgetError(UserError, ValueError):
    """A FLOPs cap outside what the budget helper can fit."""


def compare_action(entries: Sequence[str | ModelSpec], *, input_size: tuple[int, int] = (224, 224),
                   task: str = "classification", convention: str = "mac", fps: bool = False, fps_settings=None,
                   progress: Progress | None = None, stop: StopFlag = None,
                   limits: ResourceLimits | None = None) -> ActionResult:
    """FLOPs and parameters with and without MSCSA for every entry (a name, or a ``ModelSpec`` with its own
    settings), the paper's figures beside; with ``fps``, FPS measured interleaved with intervals."""
    from mscsa_lab.analysis.compare import as_configuration, compare_backbones
    from mscsa_lab.bench.comparison import compare_with_fps
    from mscsa_lab.bench.settings import BenchmarkSettings
    from mscsa_lab.io.figures import plot_comparison

    specs = comparison_entries(entries, task, input_size, limits, keeps_activations=True)
    configurations = [as_configuration(spec) for spec in specs]
    if fps:
        # the server's time per model unless the caller sets its own
        seconds = float((limits or DEFAULT_LIMITS).max_fps_seconds)
        settings = fps_settings or BenchmarkSettings(device="auto", batch=8, warmup=2, steps=2, repeats=6,
                                                     max_repeats=30, max_seconds=seconds)
        for spec in specs:
            guard(spec if spec.task != "segmentation" else spec.replace(task="classification"), limits,
                  batch=settings.batch, copies=2)
        table = compare_with_fps(configurations, input_size, settings, task, convention, progress=progress,
                                 stop=stop)
    else:
        table = compare_backbones(configurations, input_size, task, convention=convention, progress=progress,
                                  known=True)
    return ActionResult(title=table.title, table=table, figures={"flops": plot_comparison(table.frame, table.title)},
                        warnings=list(table.metadata.get("warnings") or []))


def budget_action(name: str, *, cap: float = 0.10, input_size: tuple[int, int] = (224, 224),
                  task: str = "classification", settings: dict | None = None, progress: Progress | None = None,
                  stop: StopFlag = None, limits: ResourceLimits | None = None) -> ActionResult:
    """The MSCSA configuration whose added FLOPs come closest to ``cap`` x the backbone's without passing
    it (the paper's ~10% rule). ``data["config"]`` holds the chosen settings (None when none fits)."""
    from mscsa_lab.analysis.budget import fit_flops_budget

    if not isinstance(cap, (int, float)) or not 0 < cap <= 10:
        raise BudgetError(f"cap {cap!r} is out of range: give a fraction of the backbone's FLOPs above 0 and at "
                          "most 10 (0.1 = 10%)")
    guard(ModelSpec.resolve(name, task=task, input_size=input_size, settings=settings), limits,
          keeps_activations=True)  # every candidate is counted like this model
    result = fit_flops_budget(name, cap, input_size, task, progress=progress, stop=stop, **(settings or {}))
    config = result.config.to_dict() if result.config is not None else None
    table = ResultTable(f"Configurations tried under {100 * cap:.1f}% of {result.backbone}'s FLOPs",
                        result.candidates, run_metadata(model=name, cap=cap, task=task,
                                                        input_size=f"{input_size[0]}x{input_size[1]}"))
    return ActionResult(title=table.title, table=table, summary=result.message,
                        data={"config": config, "config_json": json.dumps(config, indent=2) if config else "",
                              "fits": config is not None})


def profiles_action() -> ActionResult:
    """The Table 7 rows, their settings and whether each can be built here."""
    from mscsa_lab.presets import list_profiles

    rows = []
    for profile in list_profiles():
        config = profile.config
        rows.append({"Profile": profile.name, "Backbone": profile.title, "Pooling": f"1/{config.pool_stride}",
                     "Squeeze": config.squeeze_ratio if config.squeeze_ratio is not None else "-",
                     "Depth": config.depth, "Heads": config.num_heads, "Head dim": config.key_dim,
                     "MLP ratio": config.mlp_ratio,
                     "Available": "yes" if profile.available else f"no: {profile.unavailable_reason}"})
    table = ResultTable("Table 7 profiles", pd.DataFrame(rows), run_metadata())
    return ActionResult(title=table.title, table=table)


def export_table_action(path: str) -> ActionResult:
    """A table saved by any action (CSV, Markdown, LaTeX, JSON), read back to be written in other formats."""
    from mscsa_lab.io.export import read_table
    from mscsa_lab.io.figures import figure_for_table

    table = read_table(path)
    figure = figure_for_table(table)
    return ActionResult(title=table.title, table=table, figures={"figure": figure} if figure is not None else {})
