"""What a request will cost, known before it runs, and the limits a shared server puts on it.

A long-running app must refuse work that will not fit instead of finding out by running out of
memory: a form that allows depth 24, 64 heads of dimension 512 and MLP ratio 16 describes an
88-billion-parameter model. ``estimate_cost`` builds the requested model on PyTorch's meta device
(shapes without storage: milliseconds, no memory) and runs ``analysis.memory`` on it, which gives
the parameters and the activation memory at the requested batch without allocating either;
``check_fits`` compares that with the memory this machine has free and raises ``ResourceError``
with the numbers in the message. ``ResourceLimits`` holds the caps on what one request may ask for
(input side, batch, timed steps, rounds, models per comparison, training length); the app takes
them from its command-line flags, so a user on a big machine can raise them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from mscsa_lab.io.numbers import human_bytes, human_count
from mscsa_lab.errors import UserError

__all__ = ["ResourceLimits", "ResourceError", "CostEstimate", "estimate_cost", "available_memory_bytes",
           "check_fits", "DEFAULT_LIMITS", "meta_model"]


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
    memory_fraction: float = 0.6  # of the memory free when the request arrives

    def validate(self) -> "ResourceLimits":
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"limit {item.name} must be a positive number, got {value!r}")
        if self.memory_fraction > 1:
            raise ValueError(f"memory_fraction must be at most 1, got {self.memory_fraction}")
        return self

    def check_count(self, what: str, value: int, limit_name: str, flag: str | None = None) -> int:
        """``value`` if within the named cap, else a ``ResourceError`` that names the flag raising it."""
        limit = getattr(self, limit_name)
        if value > limit:
            hint = f" (raise it with the app's --{(flag or limit_name).replace('_', '-')})"
            raise ResourceError(f"{what} {value} is above this server's limit of {limit}{hint}")
        return value

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        if max(height, width) > self.max_side:
            raise ResourceError(f"input {height}x{width} is above this server's limit of {self.max_side} pixels a side "
                                "(raise it with the app's --max-side)")
        return height, width


DEFAULT_LIMITS = ResourceLimits()


@dataclass(frozen=True)
class CostEstimate:
    """Parameters and memory of one request, from the configuration alone."""

    label: str
    input_size: tuple[int, int]
    batch: int
    training: bool
    params: int
    param_bytes: int
    work_bytes: float  # activations the run needs beyond the weights (peak working set)

    @property
    def total_bytes(self) -> float:
        return self.param_bytes + self.work_bytes

    def describe(self) -> str:
        mode = "a training step" if self.training else "inference"
        return (f"{self.label} at {self.input_size[0]}x{self.input_size[1]}, batch {self.batch} ({mode}): "
                f"{human_count(self.params)} parameters ({human_bytes(self.param_bytes)}) + about "
                f"{human_bytes(self.work_bytes)} of activations = {human_bytes(self.total_bytes)}")


def estimate_cost(profile: str | None = None, backbone: str | None = None, task: str = "classification",
                  input_size: tuple[int, int] = (224, 224), batch: int = 1, training: bool = False,
                  num_classes: int = 1000, keeps_activations: bool = False, **settings: Any) -> CostEstimate:
    """The cost of building ``profile``/``backbone`` with ``settings`` and running it at ``batch``,
    found on the meta device (nothing is allocated; an 88-billion-parameter request costs milliseconds).

    Inference needs the weights plus about twice the largest single module call (its input, its output
    and a kernel's workspace); a training step needs the weights, gradients, AdamW state and every
    tensor autograd keeps (``analysis.memory``). ``keeps_activations``: the work holds every module's
    output at once (FLOPs counting traces the whole graph), so all activations count."""
    from mscsa_lab.analysis.memory import memory_profile
    from mscsa_lab.registry import parse_input_size

    height, width = parse_input_size(*input_size)
    profile = (profile or "").strip() or None
    backbone = (backbone or "").strip() or None
    model = meta_model(profile, backbone=backbone, task=task, num_classes=num_classes, img_size=(height, width),
                       **settings)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    label = f"{backbone or profile} + MSCSA"
    if params > DEFAULT_LIMITS.max_params * 1000:  # far beyond any limit: no need to trace it
        return CostEstimate(label, (height, width), batch, training, params, param_bytes, float("nan"))
    totals = memory_profile(model, (height, width), batch_size=batch, training=training).totals
    if training:
        work = totals.peak_training_bytes - totals.param_bytes - totals.buffer_bytes
    elif keeps_activations:
        work = float(totals.activation_bytes) + totals.buffer_bytes
    else:
        work = 2.0 * totals.largest_call_bytes + totals.buffer_bytes
    return CostEstimate(label, (height, width), batch, training, params, param_bytes, float(work))


def _cgroup_free_bytes() -> float:
    """Free memory under this process's cgroup (containers), or inf when there is no limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = float(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or float(limit_text) > 2**60:
            return math.inf
        return max(0.0, float(limit_text) - usage)
    return math.inf


def available_memory_bytes(device: str | torch.device = "cpu") -> float:
    """Memory free for new work now: on CUDA the device's free memory, on the CPU the smaller of the
    kernel's MemAvailable and the container's limit minus its usage (inf when neither is known)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    available = math.inf
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024
                break
    except OSError:
        if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
            available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(available, _cgroup_free_bytes())


def check_fits(estimate: CostEstimate, limits: ResourceLimits = DEFAULT_LIMITS, copies: int = 1,
               device: str | torch.device = "cpu", free_bytes: float | None = None) -> CostEstimate:
    """``estimate`` if it fits, else ``ResourceError`` with the numbers. ``copies``: how many copies of the
    weights the request holds at once (the app keeps a cached model and works on a copy of it)."""
    if estimate.params > limits.max_params:
        raise ResourceError(f"{estimate.label} has {human_count(estimate.params)} parameters, above this server's "
                            f"limit of {human_count(limits.max_params)} (raise it with the app's --max-params); "
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


def meta_model(*args: Any, **kwargs: Any) -> Any:
    """``registry.create_mscsa_model(*args, **kwargs)`` built on the meta device: the modules and their
    shapes without weights, so ``memory_profile`` and ``traffic_profile`` can run any size of model and
    batch in a moment without memory. Saved-for-backward bytes can differ from the CPU's where a kernel
    is chosen by device (fused attention; see the module notes). Pretrained weights cannot be loaded."""
    from mscsa_lab.registry import create_mscsa_model

    with torch.device("meta"):
        return create_mscsa_model(*args, **kwargs).eval()
