"""Training and held-out data: timm's transforms from the model's data configuration, and samplers
that split each global batch the same way for any number of processes. Finding the images (folders,
unlabelled photos, the synthetic shapes) is ``mscsa_lab.train.folders``; its names are re-exported here.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from mscsa_lab.train.config import TrainingInputError
from mscsa_lab.train.folders import VAL_FOLDER_NAMES, DataSource, ImageFiles, repeat_dataset, scan_data, scan_images

__all__ = [
    "DataSource",
    "scan_data",
    "data_config_for",
    "build_transforms",
    "ResumableSampler",
    "train_loader",
    "eval_loader",
    "split_micro_batches",
    "VAL_FOLDER_NAMES",
    "default_crop_scale",
    "scan_images",
    "ImageFiles",
    "repeat_dataset",
    "loader_error",
    "batches",
]


# ---------------------------------------------------------------------- preprocessing
def data_config_for(backbone: str, img_size: int, crop_pct: float | None = None,
                    interpolation: str | None = None, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """timm's data configuration (input size, interpolation, mean, std, crop) for the backbone's
    pretrained weights, at ``img_size``: ``resolve_data_config`` with the backbone's pretrained cfg."""
    pretrained_cfg = getattr(model, "pretrained_cfg", None) if model is not None else None
    if not pretrained_cfg:
        cfg = timm.models.get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
        pretrained_cfg = cfg.to_dict() if cfg is not None else {}
    args: dict[str, Any] = {"input_size": (3, img_size, img_size)}
    if crop_pct is not None:
        args["crop_pct"] = crop_pct
    if interpolation is not None:
        args["interpolation"] = interpolation
    config = resolve_data_config(args, pretrained_cfg=dict(pretrained_cfg))
    config["mean"] = tuple(float(v) for v in config["mean"])
    config["std"] = tuple(float(v) for v in config["std"])
    return config


def default_crop_scale(img_size: int) -> tuple[float, float]:
    """The random-resized-crop area range for training images of ``img_size`` pixels.

    timm's (0.08, 1) is made for 224 px ImageNet photos, where the object usually fills much of the
    frame. Small training images mostly come from small datasets of small objects (digits, icons,
    the synthetic shapes), where an 8% crop often holds none of the object. The lower bound grows
    with (224 / size)^2 below 224 px, up to half the image: 0.08 at 224 px, 0.25 at 128, 0.44 at 96,
    0.5 at 64."""
    low = min(0.5, 0.08 * (224.0 / max(int(img_size), 1)) ** 2)
    return (round(max(0.08, low), 3), 1.0)


def build_transforms(data_config: dict[str, Any], augment: bool = True, scale: tuple[float, float] | None = None,
                     hflip: float = 0.5, color_jitter: float = 0.0, auto_augment: str | None = None,
                     ratio: tuple[float, float] | None = None):
    """(training transform, evaluation transform) from timm's ``create_transform``; without
    ``augment`` training uses the evaluation transform (deterministic inputs)."""
    common = dict(input_size=data_config["input_size"], interpolation=data_config["interpolation"],
                  mean=data_config["mean"], std=data_config["std"])
    eval_transform = create_transform(**common, is_training=False, crop_pct=data_config["crop_pct"],
                                      crop_mode=data_config.get("crop_mode"))
    if not augment:
        return eval_transform, eval_transform
    train_transform = create_transform(**common, is_training=True, scale=tuple(scale) if scale else None,
                                       ratio=tuple(ratio) if ratio else None, hflip=hflip,
                                       color_jitter=color_jitter, auto_augment=auto_augment)
    return train_transform, eval_transform


# ---------------------------------------------------------------------- sampling and loading
class ResumableSampler(Sampler[int]):
    """``DistributedSampler`` (same seeded order on every process, each takes its share) that can
    start an epoch part-way through, so a resumed run sees exactly the samples it had not seen."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                        drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    @property
    def full_length(self) -> int:
        return len(self.inner)


def default_workers(world_size: int, device_type: str = "cpu") -> int:
    """Data loading processes per training process: on a GPU all cores but one feed it (at most 8);
    on a CPU the model's threads need the cores, so none below 8 cores (measured: 2 cores train
    15% faster with 0 workers than with 1), else a quarter of the process's share."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = cores // max(1, world_size)
    if device_type == "cuda":
        return max(0, min(8, share - 1))
    return 0 if share < 8 else min(4, share // 4)


def train_loader(dataset: Dataset, loader_batch: int, sampler: ResumableSampler, workers: int,
                 pin_memory: bool = False, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``batch_size * accum_steps`` samples (split into micro-batches by the engine);
    incomplete last batches are dropped. ``generator`` seeds the workers (and keeps the loader
    from drawing on the global RNG): reseeded per epoch, each epoch's worker augmentations are
    reproducible. Workers are restarted each epoch for that reason (not persistent)."""
    return DataLoader(dataset, batch_size=loader_batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, generator=generator)


def eval_loader(dataset: Dataset, batch: int, rank: int, world_size: int, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """This process's share of the held-out set: every ``world_size``-th image, no padding, so the
    summed counts over processes cover each image exactly once."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size))) if world_size > 1 else dataset
    return DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def split_micro_batches(images: torch.Tensor, targets: torch.Tensor, accum_steps: int):
    """Micro-batch ``j`` takes every ``accum_steps``-th sample from ``j``: the samples that
    process ``j`` of ``accum_steps`` processes would get from ``DistributedSampler`` for the same
    global batch. So one process with ``accum_steps=N`` sees per micro-batch what each of N DDP
    processes sees (same BatchNorm batches), and the averaged gradient is the same."""
    if accum_steps == 1:
        return [(images, targets)]
    return [(images[j::accum_steps], targets[j::accum_steps]) for j in range(accum_steps)]


def steps_per_epoch(sampler: ResumableSampler, loader_batch: int) -> int:
    return sampler.full_length // loader_batch


def check_batch_fits(train_count: int, world_size: int, batch_size: int, accum_steps: int) -> None:
    per_process = train_count // world_size
    needed = batch_size * accum_steps
    if per_process < needed:
        share = f" ({per_process} per process for {world_size} processes)" if world_size > 1 else ""
        raise TrainingInputError(
            f"the training set has {train_count} images{share}: fewer than one batch of {needed} "
            f"(batch {batch_size} x accum steps {accum_steps}); lower the batch size or add images"
        )


def loader_error(error: Exception) -> Exception:
    """A user error raised in a DataLoader worker comes back with the worker's whole traceback in its
    message; this gives the same error with the message alone (other errors unchanged)."""
    from mscsa_lab.errors import UserError

    text = str(error)
    if isinstance(error, UserError) and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
        try:
            return type(error)(message)
        except TypeError:
            return error
    return error


def batches(loader):
    """The loader's batches; an error a worker raised comes with its own message (``loader_error``)."""
    from mscsa_lab.errors import UserError

    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except UserError as error:
            raise loader_error(error) from None
        yield item
