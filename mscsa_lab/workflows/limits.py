"""What one request may ask for: the caps and the memory rule every action is checked against before
any work (the app's ``--max-*`` flags, the command line's top-level ``--max-*`` flags).

The measurement (what a model will need, what the machine has free) is ``analysis.cost``; this module
is the policy: caps on input side, batch, timed steps, rounds, models per comparison and training
length, a largest model, and the share of free memory one request may take. ``guard`` applies all of it
to a ``ModelSpec`` and raises ``ResourceError`` with the numbers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from mscsa_lab.analysis.cost import CostEstimate, available_memory_bytes
from mscsa_lab.errors import UserError
from mscsa_lab.io.numbers import human_bytes, human_count

__all__ = ["ResourceError", "ResourceLimits", "DEFAULT_LIMITS", "check_fits", "guard", "NO_LIMITS"]


class ResourceError(UserError, ValueError):
    """A request larger than this server allows or than its free memory holds; the message has the numbers."""


@dataclass(frozen=True)
class ResourceLimits:
    """Caps on one request. Each has an app flag (``--max-side`` ...) for a user on a bigger machine."""

    max_side: int = 2048  # input height or width, pixels
    max_batch: int = 256
    max_steps: int = 1000  # forward passes per timed block
    max_repeats: int = 200  # timed rounds
    max_models: int = 8  # backbones or configurations per comparison or benchmark
    max_epochs: int = 100
    max_train_steps: int = 100_000
    max_train_minutes: float = 240.0  # a training run stops cleanly (checkpoint kept) at this time
    max_params: int = 1_000_000_000  # one model
    max_fps_seconds: float = 30.0  # FPS timing per model in a comparison (rounds stop before passing it)
    memory_fraction: float = 0.6  # of the memory free when the request arrives
    # How a message tells the user to raise a limit: the app's flags, or the command line's.
    raise_hint: str = "the app's --{flag}"

    def validate(self) -> "ResourceLimits":
        for item in fields(self):
            if item.name == "raise_hint":
                continue
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ResourceError(f"limit {item.name} must be a positive number, got {value!r}")
        if self.memory_fraction > 1:
            raise ResourceError(f"memory_fraction must be at most 1, got {self.memory_fraction}")
        return self

    def check_count(self, what: str, value: int, limit_name: str, flag: str | None = None) -> int:
        """``value`` if within the named cap, else a ``ResourceError`` that names the flag raising it."""
        limit = getattr(self, limit_name)
        if value > limit:
            hint = f" (raise it with {self.hint(flag or limit_name)})"
            raise ResourceError(f"{what} {value} is above this server's limit of {limit}{hint}")
        return value

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        if max(height, width) > self.max_side:
            raise ResourceError(f"input {height}x{width} is above this server's limit of {self.max_side} pixels a side "
                                f"(raise it with {self.hint('max_side')})")
        return height, width

    def hint(self, name: str) -> str:
        return self.raise_hint.format(flag=name.replace("_", "-"))

    def replace(self, **changes: Any) -> "ResourceLimits":
        return dataclasses.replace(self, **changes).validate()


DEFAULT_LIMITS = ResourceLimits()


def check_fits(estimate: CostEstimate, limits: ResourceLimits = DEFAULT_LIMITS, copies: int = 1,
               device: str | torch.device = "cpu", free_bytes: float | None = None) -> CostEstimate:
    """``estimate`` if it fits, else ``ResourceError`` with the numbers. ``copies``: how many copies of the
    weights the request holds at once (the app keeps a cached model and works on a copy of it)."""
    if estimate.params > limits.max_params:
        raise ResourceError(f"{estimate.label} has {human_count(estimate.params)} parameters, above this server's "
                            f"limit of {human_count(limits.max_params)} (raise it with {limits.hint('max_params')}); "
                            "lower depth, heads, head dim or MLP ratio")
    free = available_memory_bytes(device) if free_bytes is None else free_bytes
    allowed = limits.memory_fraction * free
    needed = copies * estimate.param_bytes + estimate.work_bytes
    if not math.isfinite(needed) or needed > allowed:
        raise ResourceError(
            f"{estimate.describe()}{f' with {copies} copies of the weights' if copies > 1 else ''}: needs about "
            f"{human_bytes(needed)}, but this server allows one request {human_bytes(allowed)} "
            f"({100 * limits.memory_fraction:.0f}% of the {human_bytes(free)} free now). "
            "Lower the batch, the input size or the model's size")
    return estimate


# For a user who knows what they ask for (``--no-limits``): nothing is refused but what cannot be counted.
NO_LIMITS = ResourceLimits(max_side=10**6, max_batch=10**9, max_steps=10**9, max_repeats=10**9, max_models=10**6,
                           max_epochs=10**9, max_train_steps=10**12, max_train_minutes=10**9, max_params=10**15,
                           memory_fraction=1.0)


def guard(spec: Any, limits: ResourceLimits | None = None, batch: int = 1, training: bool = False,
          keeps_activations: bool = False, copies: int = 1) -> CostEstimate:
    """Refuse, before any work, a request for ``spec`` (a ``workflows.ModelSpec``) that asks for more than
    ``limits`` allow or than the free memory holds; the estimate when it fits."""
    limits = limits or DEFAULT_LIMITS
    limits.check_size(*spec.input_size)
    limits.check_count("batch", batch, "max_batch")
    return check_fits(spec.estimate(batch, training, keeps_activations, max_params=limits.max_params), limits,
                      copies=copies)
