"""How a benchmark runs: its settings, the device, and the process-wide torch state it needs.

``benchmark_context`` sets the thread count, TF32 and autocast that ``BenchmarkSettings`` ask for,
under ``torch.inference_mode``, and restores every process-wide setting on the way out, so a
benchmark inside a long-running app leaves the next request's torch exactly as it found it.
FPS (``fps``) and per-component latency (``latency``) both run inside it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from mscsa_lab.errors import UserError

__all__ = ["BenchmarkSettings", "PRECISIONS", "resolve_device", "benchmark_context", "is_out_of_memory",
           "DeviceError", "BenchmarkSettingsError"]


class DeviceError(UserError, RuntimeError):
    """A device that this machine does not have (``cuda`` without a GPU) or that does not exist."""


class BenchmarkSettingsError(UserError, ValueError):
    """Benchmark settings out of range; the message names each one."""

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" is the GPU when one is present, else the CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("no CUDA GPU is available on this machine: benchmark on 'cpu' (or 'auto')")
    return resolved


@dataclass
class BenchmarkSettings:
    """How to measure. ``threads`` sets the CPU's torch thread count (None = leave as is)."""

    device: str = "auto"
    batch: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    warmup: int = 5
    steps: int = 10
    repeats: int = 5
    threads: int | None = None
    # Adaptive rounds: after ``repeats`` rounds, keep going until every ratio's 95% interval is within
    # +-target_interval of its median, or max_repeats rounds, or max_seconds per backbone (building,
    # counting and warm-up included; no round starts that would end past it). None = fixed.
    max_repeats: int | None = None
    target_interval: float = 0.02
    max_seconds: float = 120.0

    @property
    def adaptive(self) -> bool:
        return self.max_repeats is not None and self.max_repeats > self.repeats

    def validate(self) -> "BenchmarkSettings":
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} is unknown: choose one of {list(PRECISIONS)}")
        for name, low in (("batch", 1), ("warmup", 0), ("steps", 1), ("repeats", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.batch > 4096:
            problems.append(f"batch={self.batch} is too large: choose at most 4096")
        if self.max_repeats is not None and (isinstance(self.max_repeats, bool) or not isinstance(self.max_repeats, int)
                                             or self.max_repeats < self.repeats):
            problems.append(f"max_repeats must be a whole number >= repeats ({self.repeats}), got {self.max_repeats!r}")
        if not (isinstance(self.target_interval, (int, float)) and 0 < self.target_interval < 1):
            problems.append(f"target_interval must be a fraction in (0, 1), e.g. 0.02 for +-2%, got {self.target_interval!r}")
        if not (isinstance(self.max_seconds, (int, float)) and 0 < self.max_seconds <= 24 * 3600):
            problems.append(f"max_seconds must be a number of seconds in (0, 86400], got {self.max_seconds!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads must be a whole number >= 1, got {self.threads!r}")
        if problems:
            raise BenchmarkSettingsError("invalid benchmark settings: " + "; ".join(problems))
        return self


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[list[str]]:
    """Autocast / TF32 as asked; yields notes about what did not apply on this device."""
    notes: list[str] = []
    if precision == "tf32":
        if device.type != "cuda":
            notes.append("TF32 only changes CUDA matmuls: on the CPU this is plain fp32")
            yield notes
            return
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield notes
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        return
    if precision in ("fp16", "bf16"):
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield notes
        return
    yield notes


@contextlib.contextmanager
def thread_context(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)




@contextlib.contextmanager
def benchmark_context(settings: BenchmarkSettings, device: torch.device) -> Iterator[list[str]]:
    """Threads, precision and inference mode for timed work; yields notes on what did not apply
    on this device. Thread count and TF32 flags are restored afterwards."""
    with thread_context(settings.threads), torch.inference_mode(), precision_context(settings.precision, device) as notes:
        yield notes
