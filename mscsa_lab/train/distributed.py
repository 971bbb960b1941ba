"""Processes and devices: one process, or several started by ``torchrun`` (PyTorch's
``torch.distributed``: NCCL between GPUs, gloo between CPU processes).

``torchrun --nproc_per_node N -m mscsa_lab train ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``setup`` reads them. Only rank 0 writes files
and reports progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from mscsa_lab.bench.settings import DeviceError

__all__ = ["DistInfo", "setup", "cleanup", "resolve_device", "all_reduce_sum", "barrier", "gather_objects",
           "average_batchnorm_stats"]


@dataclass
class DistInfo:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process
    owns_group: bool = False  # the process group was created here (and is destroyed by cleanup)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is present, else the CPU; ``cpu``; ``cuda`` /
    ``cuda:N``. A GPU that is asked for but absent is an error, not a silent CPU run."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' was asked for but no CUDA GPU is visible: use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(name)
    if name != "cpu":
        raise DeviceError(f"device {name!r} is unknown: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(1, 0, 0, torch_device, None)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
            dist.init_process_group(backend=backend, device_id=torch_device)
        else:
            dist.init_process_group(backend=backend)
        owns = True
    return DistInfo(dist.get_world_size(), dist.get_rank(), local_rank, torch_device, dist.get_backend(), owns)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over processes in place (a no-op for one process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable, small), in rank order, on every process."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_batchnorm_stats(model: torch.nn.Module, info: DistInfo) -> int:
    """Average the running mean and variance of every BatchNorm over processes, in place.

    Without SyncBatchNorm (CPU processes) each process's statistics follow its own batches (DDP
    broadcasts rank 0's buffers before each forward, and each process then updates its own), so
    processes evaluating their shards would disagree with the weights rank 0 saves. Called before
    every evaluation and save, it makes all processes hold the same statistics, which rank 0
    writes: the accuracy a run reports is the accuracy of its file (timm's ``distribute_bn``
    'reduce' does the same). Returns the number of BatchNorm layers averaged."""
    if not info.distributed:
        return 0
    layers = [m for m in model.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    for layer in layers:
        for buffer in (layer.running_mean, layer.running_var):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(info.world_size)
    return len(layers)
