"""Throughput (FPS) measured the way timm's benchmark measures it, and A/B comparisons.

Method: eval mode under ``torch.inference_mode``; warm-up steps run first and are not timed; each
repeat times ``steps`` forward passes as one block, synchronising the GPU (CUDA events) or reading
``perf_counter`` on the CPU around it; FPS = batch x steps / elapsed. Several repeats give a median
and a spread, never a single run. An out-of-memory error on the GPU halves the batch and says so.

A/B runs interleave the models repeat by repeat (A B, B A, A B, ...), so drifts of a noisy machine
(clock boost, other load) hit both, and the reported ratio is the median of per-round ratios, with a
distribution-free 95% interval (``bench.stats``). With ``settings.max_repeats`` the rounds go on until
every ratio's interval is narrow enough (or a round or time cap), and the CPU used by other
processes meanwhile is measured: results from a busy machine carry a warning.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection

import torch
from torch import nn

from mscsa_lab.bench.settings import (
    BenchmarkSettings,
    is_out_of_memory,
    precision_context,
    resolve_device,
    thread_context,
)
from mscsa_lab.bench.stats import Interval, OtherLoad, median_interval
from mscsa_lab.io.metadata import device_description
from mscsa_lab.stopping import Cancelled, StopFlag, should_stop

__all__ = ["FPSResult", "ABResult", "measure_fps", "compare_fps"]


@dataclass
class FPSResult:
    name: str
    device: str
    batch: int
    fps: list[float]  # one per repeat
    images_timed: int
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    compile_s: float | None = None  # seconds of torch.compile's first call, for a compiled model

    @property
    def fps_median(self) -> float:
        return statistics.median(self.fps)

    @property
    def fps_spread(self) -> tuple[float, float]:
        return min(self.fps), max(self.fps)

    @property
    def fps_interval(self) -> Interval:
        """The median FPS and its 95% interval over the repeats."""
        return median_interval(self.fps)

    @property
    def step_ms(self) -> float:
        """Median time of one forward pass of the whole batch, in milliseconds."""
        return 1000.0 * self.batch / self.fps_median

    def summary(self) -> dict[str, Any]:
        low, high = self.fps_spread
        interval = self.fps_interval
        return dict(name=self.name, device=self.device, batch=self.batch, fps=self.fps_median, fps_min=low,
                    fps_max=high, fps_ci_low=interval.low, fps_ci_high=interval.high, step_ms=self.step_ms,
                    repeats=len(self.fps), images_timed=self.images_timed)


@dataclass
class ABResult:
    """Interleaved measurements of several models; ``ratios[name]`` is that model's FPS divided
    by the first model's, per round."""

    results: dict[str, FPSResult]
    ratios: dict[str, list[float]]
    order: list[str]  # the order the timed blocks actually ran in
    stopped_by: str = "repeats"  # "repeats" (fixed), "interval" (narrow enough), "max_repeats", "time"
    other_load: float = float("nan")  # share of all cores other processes used meanwhile
    warnings: list[str] = field(default_factory=list)
    stable: bool = True  # every ratio's interval met the target after enough rounds

    def ratio(self, name: str) -> float:
        return statistics.median(self.ratios[name])

    def ratio_interval(self, name: str) -> Interval:
        """The median per-round ratio of ``name`` over the first model, with its 95% interval."""
        return median_interval(self.ratios[name])

    def widest_half_width(self) -> float:
        """The widest 95% interval of any ratio (half-width, as a fraction): the one spread figure that the
        warnings, the Check column and the charts all quote."""
        names = list(self.ratios)[1:]
        return max((self.ratio_interval(name).half_width for name in names), default=0.0)

    def pair_interval(self, numerator: str, denominator: str) -> Interval:
        """Per-round FPS(numerator) / FPS(denominator), e.g. the fast path over the reference modules."""
        a, b = self.results[numerator].fps, self.results[denominator].fps
        return median_interval([x / y for x, y in zip(a, b)])

    @property
    def rounds(self) -> int:
        return len(next(iter(self.ratios.values())))


# ---------------------------------------------------------------------------------------- helpers
class _Timer:
    """Times a block of steps: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock

    def time(self, run_steps: Callable[[], None]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            run_steps()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        begin = self.clock()
        run_steps()
        return self.clock() - begin


@dataclass
class _Prepared:
    name: str
    forward: Callable[[], Any]
    batch: int
    notes: list[str]
    compile_s: float | None = None


def _prepare(name: str, model: nn.Module, input_size: tuple[int, int], settings: BenchmarkSettings,
             device: torch.device, compiled: bool = False) -> _Prepared:
    """Move to device/format, compile if asked, and find a batch that fits (halving on OOM).
    A model that must change device or memory format is copied: the caller's model stays as it was.
    A compiled model's first call (where torch.compile does its work) is timed apart as ``compile_s``."""
    moves = settings.channels_last or any(p.device != device for p in model.parameters())
    model = (copy.deepcopy(model) if moves else model).eval().to(device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    if settings.channels_last:
        model = model.to(memory_format=memory_format)
    runner: Callable = torch.compile(model) if compiled else model
    notes: list[str] = []
    batch = settings.batch
    height, width = input_size
    compile_s = None
    while True:
        x = torch.randn(batch, int(getattr(model, "in_chans", 3)), height, width, device=device)
        x = x.contiguous(memory_format=memory_format)
        try:
            first = time.perf_counter()
            with torch.inference_mode(), precision_context(settings.precision, device) as precision_notes:
                runner(x)  # one trial step: catches OOM (and compiles) before anything is timed
            if compiled:
                compile_s = time.perf_counter() - first
            notes.extend(n for n in precision_notes if n not in notes)
            break
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error) or batch == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            notes.append(f"out of memory at batch {batch}: halved to {batch // 2}")
            batch //= 2

    def forward(x: torch.Tensor = x) -> Any:
        return runner(x)

    return _Prepared(name, forward, batch, notes, compile_s)


def _run_block(prepared: _Prepared, steps: int, settings: BenchmarkSettings, device: torch.device) -> None:
    with torch.inference_mode(), precision_context(settings.precision, device):
        for _ in range(steps):
            prepared.forward()


# ---------------------------------------------------------------------------------------- API
def compare_fps(
    models: dict[str, nn.Module],
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    progress: Callable[[float, str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    stop: StopFlag = None,
    started: float | None = None,
    compiled: Collection[str] | None = None,
) -> ABResult:
    """Measure several models interleaved (the first is the reference for the ratios). ``stop`` is
    checked before every timed block: when set, ``Cancelled`` is raised within one block. ``started``:
    when this measurement's time began by ``clock`` (the caller's building and counting count against
    ``settings.max_seconds``); default now. ``compiled``: the models to run through ``torch.compile``
    (None: all of them when ``settings.compile``, else none)."""
    settings = (settings or BenchmarkSettings()).validate()
    if not models:
        raise ValueError("give at least one model to benchmark")
    device = resolve_device(settings.device)
    timer = _Timer(device, clock)
    names = list(models)
    was_training = {name: model.training for name, model in models.items()}
    try:
        chosen = set(names if settings.compile else ()) if compiled is None else set(compiled)
        return _compare_interleaved(models, names, input_size, settings, device, timer, progress, stop,
                                    clock() if started is None else started, chosen)
    finally:
        for name, model in models.items():
            model.train(was_training[name])


def _compare_interleaved(models: dict[str, nn.Module], names: list[str], input_size: tuple[int, int],
                         settings: BenchmarkSettings, device: torch.device, timer: _Timer,
                         progress: Callable[[float, str], None] | None, stop: StopFlag = None,
                         started: float = 0.0, compiled: Collection[str] = ()) -> ABResult:
    """The rounds; adaptive runs end when the intervals are narrow enough, at ``max_repeats``, or before a
    round that would end past ``started + max_seconds`` (predicted from the longest round so far), so a
    run never outlasts its cap by more than the spread of one round's time."""
    with thread_context(settings.threads):
        prepared = {name: _prepare(name, models[name], input_size, settings, device, name in compiled)
                    for name in names}
        for item in prepared.values():  # warm-up, not timed
            _run_block(item, settings.warmup, settings, device)
        fps: dict[str, list[float]] = {name: [] for name in names}
        order: list[str] = []
        reference = names[0]
        stopped_by = "repeats"
        limit = settings.max_repeats if settings.adaptive else settings.repeats
        deadline = started + settings.max_seconds
        longest_round = 0.0
        with OtherLoad() as load:
            for round_index in range(limit):
                if settings.adaptive and round_index > 0 and timer.clock() + longest_round > deadline:
                    stopped_by = "time"
                    break
                round_started = timer.clock()
                sequence = names if round_index % 2 == 0 else names[::-1]
                for name in sequence:
                    if should_stop(stop):
                        raise Cancelled("the benchmark was cancelled")
                    item = prepared[name]
                    elapsed = timer.time(lambda item=item: _run_block(item, settings.steps, settings, device))
                    fps[name].append(item.batch * settings.steps / max(elapsed, 1e-12))
                    order.append(name)
                rounds = round_index + 1
                longest_round = max(longest_round, timer.clock() - round_started)
                widest = max((median_interval([b / a for a, b in zip(fps[reference], fps[name])]).half_width
                              for name in names[1:]), default=0.0)
                if progress is not None:
                    width = f", ratio interval +-{100 * widest:.1f}%" if len(names) > 1 and rounds >= 6 else ""
                    progress(rounds / limit, f"round {rounds} of at most {limit}{width}")
                if not settings.adaptive or rounds < settings.repeats:
                    continue
                if widest <= settings.target_interval:
                    stopped_by = "interval"
                    break
            else:
                stopped_by = "max_repeats" if settings.adaptive else "repeats"
        threads_used = torch.get_num_threads()
    description = device_description(device)
    if device.type == "cpu":
        description = description.split(",")[0] + f", {threads_used} threads)"
    results = {
        name: FPSResult(
            name=name,
            device=description,
            batch=prepared[name].batch,
            fps=fps[name],
            images_timed=prepared[name].batch * settings.steps * len(fps[name]),
            settings=asdict(settings),
            notes=list(prepared[name].notes),
            compile_s=prepared[name].compile_s,
        )
        for name in names
    }
    ratios = {name: [b / a for a, b in zip(fps[reference], fps[name])] for name in names}
    result = ABResult(results, ratios, order, stopped_by, load.share)
    result.warnings = _warnings(result, settings, load)
    return result


SPREAD_WARNING = 0.20  # a model whose rounds spread more than this (IQR / median) is marked noisy


def _warnings(result: ABResult, settings: BenchmarkSettings, load: OtherLoad) -> list[str]:
    """What makes these figures less than trustworthy, in words a reader acts on."""
    warnings = []
    if load.busy:
        warnings.append(f"machine busy: {load.describe()}; figures swing with that load, re-run on an idle machine")
    for name, item in result.results.items():
        if len(item.fps) >= 4:
            quartiles = statistics.quantiles(item.fps, n=4)
            spread = (quartiles[2] - quartiles[0]) / statistics.median(item.fps)
            if spread > SPREAD_WARNING:
                warnings.append(f"{name}: rounds spread {100 * spread:.0f}% (interquartile range over median), "
                                "the machine is noisy")
    names = list(result.ratios)[1:]
    if names:
        widest = result.widest_half_width()
        if result.stopped_by in ("time", "max_repeats") and widest > settings.target_interval:
            cap = f"{settings.max_seconds:.0f} s" if result.stopped_by == "time" else f"{settings.max_repeats} rounds"
            warnings.append(f"the ratio's 95% interval is still +-{100 * widest:.1f}% after {result.rounds} rounds "
                            f"({cap} cap; target +-{100 * settings.target_interval:.1f}%): not a stable answer")
            result.stable = False
        elif result.rounds < 6:
            warnings.append(f"only {result.rounds} rounds: no 95% interval exists below 6, the range "
                            f"(+-{100 * widest:.1f}%) is shown instead: not a stable answer")
            result.stable = False
    return warnings


def measure_fps(
    model: nn.Module,
    input_size: tuple[int, int] = (224, 224),
    settings: BenchmarkSettings | None = None,
    name: str = "model",
    clock: Callable[[], float] = time.perf_counter,
) -> FPSResult:
    """FPS of one model: median and spread over ``settings.repeats`` timed blocks."""
    return compare_fps({name: model}, input_size, settings, clock=clock).results[name]
