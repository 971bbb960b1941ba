"""Benchmark: FPS of backbones alone and with MSCSA, measured interleaved, with intervals and checks."""
from __future__ import annotations

from typing import Callable, Sequence

from mscsa_lab.errors import UserError
from mscsa_lab.stopping import StopFlag
from mscsa_lab.workflows.limits import ResourceLimits, guard
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.spec import ModelSpec

__all__ = ["benchmark_action", "comparison_entries", "EntryError"]

Progress = Callable[[float, str], None]


class EntryError(UserError, ValueError):
    """A comparison or benchmark without models, or with more than this server allows."""


def comparison_entries(entries: Sequence[str | ModelSpec], task: str, input_size: tuple[int, int],
                       limits: ResourceLimits | None, batch: int = 1, keeps_activations: bool = False,
                       copies: int = 2, what: str = "models to compare") -> list[ModelSpec]:
    """Each entry as a ``ModelSpec`` (names resolved at ``task`` and ``input_size``; specs keep their own
    settings), every one costed before any work."""
    from mscsa_lab.workflows.limits import DEFAULT_LIMITS

    limits = limits or DEFAULT_LIMITS
    specs = [entry if isinstance(entry, ModelSpec) else
             ModelSpec.resolve(str(entry), task=task, input_size=input_size) for entry in entries]
    if not specs:
        raise EntryError("name at least one backbone or profile (or pin configurations in the Build tab)")
    limits.check_count(what, len(specs), "max_models")
    for spec in specs:
        costed = spec if spec.task != "segmentation" else spec.replace(task="classification")
        guard(costed, limits, batch=batch, keeps_activations=keeps_activations, copies=copies)
    return specs


def benchmark_action(entries: Sequence[str | ModelSpec], settings, *, input_size: tuple[int, int] = (224, 224),
                     task: str = "classification", fast: bool = True, latency_of: str | ModelSpec | None = None,
                     progress: Progress | None = None, stop: StopFlag = None,
                     limits: ResourceLimits | None = None) -> ActionResult:
    """FPS of each backbone alone, +MSCSA and +MSCSA on the fast path, timed interleaved (``settings``: a
    ``bench.settings.BenchmarkSettings``), with 95% intervals, checks and warnings; with ``latency_of``,
    the per-component latency of that model too."""
    from mscsa_lab.analysis.compare import as_configuration
    from mscsa_lab.bench.comparison import throughput_comparison
    from mscsa_lab.io.figures import plot_throughput
    from mscsa_lab.stopping import Cancelled, should_stop
    from mscsa_lab.workflows.profiling import latency_action

    settings = settings.validate()
    specs = comparison_entries(entries, task, input_size, limits, batch=settings.batch, copies=3 if fast else 2,
                               what="models to benchmark")
    table = throughput_comparison([as_configuration(spec) for spec in specs], input_size, settings, task, fast=fast,
                                  progress=progress, stop=stop)
    warnings = list(table.metadata.get("warnings") or [])
    result = ActionResult(title=f"{table.title}: {len(specs)} model(s), batch {settings.batch}", table=table,
                          figures={"fps": plot_throughput(table.frame, table.title)}, warnings=warnings)
    if latency_of:
        if should_stop(stop):
            raise Cancelled("the benchmark was cancelled")
        spec = latency_of if isinstance(latency_of, ModelSpec) else ModelSpec.resolve(
            str(latency_of), task="classification", input_size=input_size)
        latency = latency_action(spec, settings, limits=limits, stop=stop)
        result.tables["latency"] = latency.table
        result.figures["latency"] = latency.figure
    return result
