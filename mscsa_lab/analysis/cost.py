"""What a request will cost, known before it runs, and how much memory is free for it.

A form that allows depth 24, 64 heads of dimension 512 and MLP ratio 16 describes an
88-billion-parameter model. ``unit_cost`` takes the requested model built on PyTorch's meta device
(shapes without storage, no memory) and runs ``analysis.memory`` on it once at batch 1, which gives
the parameters and the activation memory without allocating either; ``cost_at_batch`` scales that to
any batch. ``available_memory_bytes`` says what this machine (its container too) has free. What one
request may use is policy, not measurement: ``workflows.limits`` (``ResourceLimits``, ``check_fits``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mscsa_lab.io.numbers import human_bytes, human_count

__all__ = ["CostEstimate", "UnitCost", "unit_cost", "cost_at_batch", "estimate_cost", "available_memory_bytes",
           "meta_model"]


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


@dataclass(frozen=True)
class UnitCost:
    """The batch-1 cost of one architecture at one input size, found once on the meta device: what does
    not grow with the batch (weights, buffers, gradients, optimizer state) apart from what does."""

    label: str
    input_size: tuple[int, int]
    training: bool
    params: int
    param_bytes: int
    buffer_bytes: int
    activation_bytes: float  # every leaf module's output at batch 1
    largest_call_bytes: float  # the largest input+output of one module call at batch 1
    saved_bytes: float  # what autograd keeps at batch 1 (training), 0 for inference
    fixed_training_bytes: float  # gradients + AdamW state (training), 0 for inference


# Beyond this many parameters no limit can allow the model: it is not traced (that alone would take minutes).
_UNTRACEABLE_PARAMS = 10**12


def unit_cost(model: Any, label: str, input_size: tuple[int, int], training: bool = False,
              trace_params: int | None = None) -> UnitCost:
    """The ``UnitCost`` of a model built on the meta device (``meta_model``) at ``input_size``.

    A model of more than ``trace_params`` parameters (a server's limit, which refuses it on that count
    alone) is not traced: its memory is left unknown (NaN), and a configuration of tens of billions of
    parameters is refused at once instead of after a meta pass of 10-15 s."""
    from mscsa_lab.analysis.memory import memory_profile

    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    if params > min(_UNTRACEABLE_PARAMS, trace_params or _UNTRACEABLE_PARAMS):
        nan = float("nan")
        return UnitCost(label, tuple(input_size), training, params, param_bytes, buffer_bytes, nan, nan, nan, nan)
    # A training pass runs at batch 2 (BatchNorm needs two values per channel), halved to one image.
    batch = 2 if training else 1
    totals = memory_profile(model, tuple(input_size), batch_size=batch, training=training).totals
    fixed = (totals.gradient_bytes + totals.optimizer_state_bytes) if training else 0.0
    return UnitCost(label, tuple(input_size), training, params, param_bytes, buffer_bytes,
                    float(totals.activation_bytes) / batch, float(totals.largest_call_bytes) / batch,
                    float(totals.saved_bytes) / batch if training else 0.0, float(fixed))


def cost_at_batch(unit: UnitCost, batch: int = 1, keeps_activations: bool = False) -> CostEstimate:
    """``unit`` at ``batch``: activations, the largest call and saved tensors all carry the batch
    dimension, so they scale with it (per-channel statistics that do not are a few bytes).

    Inference needs the weights plus about twice the largest single module call (its input, its output
    and a kernel's workspace); a training step needs the weights, gradients, AdamW state, every tensor
    autograd keeps and that largest call. ``keeps_activations``: the work holds every module's output at
    once (FLOPs counting traces the whole graph), so all activations count."""
    if unit.training:
        work = unit.fixed_training_bytes + batch * (unit.saved_bytes + unit.largest_call_bytes)
    elif keeps_activations:
        work = batch * unit.activation_bytes + unit.buffer_bytes
    else:
        work = 2.0 * batch * unit.largest_call_bytes + unit.buffer_bytes
    return CostEstimate(unit.label, unit.input_size, int(batch), unit.training, unit.params, unit.param_bytes,
                        float(work))


def estimate_cost(profile: str | None = None, backbone: str | None = None, task: str = "classification",
                  input_size: tuple[int, int] = (224, 224), batch: int = 1, training: bool = False,
                  num_classes: int = 1000, keeps_activations: bool = False, **settings: Any) -> CostEstimate:
    """The cost of building ``profile``/``backbone`` with ``settings`` and running it at ``batch``,
    found on the meta device (nothing is allocated; an 88-billion-parameter request costs seconds).
    ``workflows.ModelSpec.estimate`` is the cached way to the same figures."""
    from mscsa_lab.registry import parse_input_size

    height, width = parse_input_size(*input_size)
    profile = (profile or "").strip() or None
    backbone = (backbone or "").strip() or None
    model = meta_model(profile, backbone=backbone, task=task, num_classes=num_classes, img_size=(height, width),
                       **settings)
    unit = unit_cost(model, f"{backbone or profile} + MSCSA", (height, width), training)
    return cost_at_batch(unit, batch, keeps_activations)


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


def meta_model(*args: Any, **kwargs: Any) -> Any:
    """``registry.create_mscsa_model(*args, **kwargs)`` built on the meta device: the modules and their
    shapes without weights, so ``memory_profile`` and ``traffic_profile`` can run any size of model and
    batch in a moment without memory. Saved-for-backward bytes can differ from the CPU's where a kernel
    is chosen by device (fused attention; see the module notes). Pretrained weights cannot be loaded."""
    from mscsa_lab.registry import create_mscsa_model

    with torch.device("meta"):
        return create_mscsa_model(*args, **kwargs).eval()
