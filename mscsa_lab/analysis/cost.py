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
           "check_fits", "DEFAULT_LIMITS"]


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
    from mscsa_lab.analysis.memory import memory_profile, meta_model
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


_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def _read_number(path: Path) -> float | None:
    """A cgroup file's number: None when absent or unreadable, inf for "max" (v2's no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return math.inf
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    return math.inf if value >= _UNLIMITED else value


def _reclaimable(stat_file: Path, key: str) -> float:
    """Inactive file cache the kernel can drop under pressure (``memory.stat``), counted as free."""
    try:
        for line in stat_file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return float(value)
    except (OSError, ValueError):
        pass
    return 0.0


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's (v2 path, v1 memory-controller path) from ``/proc/self/cgroup``."""
    unified = memory = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and parts[0] == "0":
            unified = path
        elif "memory" in controllers.split(","):
            memory = path
    return unified, memory


def _walk_free(base: Path, own: str | None, limit_names: tuple[str, ...], usage_name: str,
               stat_key: str) -> float:
    """The smallest (limit - usage + reclaimable cache) from the process's cgroup up to ``base``.

    The process's path may be absent under ``base`` (a container sees its own cgroup at the mount's
    root while /proc/self/cgroup shows the host's path): then the walk starts at ``base`` itself."""
    start = base / own.strip("/") if own and own.strip("/") else base
    if not start.is_dir() or ".." in Path(own or "").parts:
        start = base
    free = math.inf
    level = start
    while True:
        limits = [value for name in limit_names if (value := _read_number(level / name)) is not None]
        limit = min(limits, default=math.inf)
        if math.isfinite(limit):
            usage = _read_number(level / usage_name)
            if usage is not None and math.isfinite(usage):
                cache = _reclaimable(level / "memory.stat", stat_key)
                free = min(free, max(0.0, limit - usage + cache))
        if level == base or base not in level.parents:
            break
        level = level.parent
    return free


def _cgroup_free_bytes(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                       proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float:
    """Free memory under this process's own cgroup and every cgroup above it (the tightest limit
    wins: a job capped at 5 GB inside a container capped at 16 GB has 5 GB less its usage), or inf
    when no limit applies. Reads cgroup v2 (``memory.max``/``memory.high``, ``memory.current``) and
    v1 (``memory/…/memory.limit_in_bytes``, ``memory.usage_in_bytes``); the inactive file cache,
    which the kernel reclaims before failing, counts as free. ``cgroup_root`` and ``proc_cgroup`` are
    parameters so tests can point them at a fake tree."""
    root, proc = Path(cgroup_root), Path(proc_cgroup)
    unified, memory = _own_cgroups(proc)
    free = math.inf
    if memory is not None and (root / "memory").is_dir():
        free = min(free, _walk_free(root / "memory", memory, ("memory.limit_in_bytes",), "memory.usage_in_bytes",
                                    "total_inactive_file"))
    if unified is not None:
        for base in (root, root / "unified"):  # pure v2, or the hybrid layout's v2 mount
            if (base / "cgroup.controllers").is_file() or (base / "memory.max").is_file():
                free = min(free, _walk_free(base, unified, ("memory.max", "memory.high"), "memory.current",
                                            "inactive_file"))
                break
    if unified is None and memory is None:  # no /proc (another OS, a sandbox): the root files alone
        free = min(_walk_free(root, None, ("memory.max", "memory.high"), "memory.current", "inactive_file"),
                   _walk_free(root / "memory", None, ("memory.limit_in_bytes",), "memory.usage_in_bytes",
                              "total_inactive_file"))
    return free


def available_memory_bytes(device: str | torch.device = "cpu", cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                           proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float:
    """Memory free for new work now: on CUDA the device's free memory, on the CPU the smaller of the
    kernel's MemAvailable and what this process's cgroups (nested or not) leave it (inf when neither
    is known)."""
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
    return min(available, _cgroup_free_bytes(cgroup_root, proc_cgroup))


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
