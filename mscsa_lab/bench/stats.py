"""How much to believe a throughput figure: intervals for medians and a watch on other load.

Benchmark rounds on a shared machine are not normally distributed (a busy neighbour makes a few
rounds much slower), so the intervals here are distribution-free: the confidence interval of a
median from order statistics (the binomial/sign-test construction), which needs no assumption
about the noise and is not dragged by one slow round. With fewer than six rounds no 95% interval
exists; the range of the rounds is returned and marked as such.

``OtherLoad`` measures how much CPU *other* processes used while a benchmark ran (Linux
``/proc/stat`` minus this process's own CPU time), which is what makes CPU figures swing; where
``/proc`` is missing it falls back to the load average.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Interval", "median_interval", "OtherLoad", "BUSY_SHARE"]

# Other processes using more than this share of all cores while a benchmark runs: results are marked.
BUSY_SHARE = 0.10


@dataclass(frozen=True)
class Interval:
    """A median and its confidence interval; ``exact`` is False when too few values gave only their range."""

    median: float
    low: float
    high: float
    count: int
    exact: bool

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the median (0.02 = +-2%)."""
        if not self.median or not math.isfinite(self.median):
            return float("inf")
        return (self.high - self.low) / 2.0 / abs(self.median)


def _binomial_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Median of ``values`` and a distribution-free confidence interval for it.

    The interval is [x_(k), x_(n-k+1)] of the sorted values with the largest k for which
    P(Binomial(n, 1/2) <= k-1) <= (1 - confidence) / 2; it covers the true median with at least
    ``confidence`` whatever the distribution of the rounds.
    """
    data = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if not data:
        nan = float("nan")
        return Interval(nan, nan, nan, 0, False)
    n = len(data)
    tail = (1.0 - confidence) / 2.0
    k = 0
    while k + 1 <= n // 2 and _binomial_cdf(k, n) <= tail:
        k += 1
    median = statistics.median(data)
    if k == 0:  # too few values for this confidence: their range, marked inexact
        return Interval(median, data[0], data[-1], n, False)
    return Interval(median, data[k - 1], data[n - k], n, True)


def _read_proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, or None without /proc."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:]]
    hertz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)  # idle + iowait
    total = sum(ticks[:8])
    return (total - idle) / hertz, total / hertz


class OtherLoad:
    """Context manager: the share of all cores used by *other* processes while the block ran.

    ``share`` is (machine busy CPU seconds - this process's CPU seconds) / (wall seconds x cores),
    clipped at 0; ``source`` says how it was measured."""

    def __init__(self) -> None:
        self.share: float = float("nan")
        self.source: str = "unavailable"

    def __enter__(self) -> "OtherLoad":
        self._machine = _read_proc_stat()
        self._own = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        cores = os.cpu_count() or 1
        wall = time.perf_counter() - self._wall
        machine = _read_proc_stat()
        own = time.process_time() - self._own
        if self._machine is not None and machine is not None and wall > 0:
            busy = machine[0] - self._machine[0]
            self.share = max(0.0, (busy - own) / (wall * cores))
            self.source = "/proc/stat"
        elif hasattr(os, "getloadavg"):
            self.share = max(0.0, os.getloadavg()[0] / cores - own / max(wall, 1e-9) / cores)
            self.source = "load average"

    @property
    def busy(self) -> bool:
        return math.isfinite(self.share) and self.share > BUSY_SHARE

    def describe(self) -> str:
        if not math.isfinite(self.share):
            return "other load: not measurable on this system"
        return f"other processes used {100 * self.share:.0f}% of the CPU while it ran ({self.source})"
