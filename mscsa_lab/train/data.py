"""Training and held-out data: an image folder (timm's folder dataset) or the synthetic shapes,
with timm's transforms from the model's data configuration, and samplers that split each global
batch the same way for any number of processes.

Folders come in two layouts:

* ``DIR/train/<class>/*.jpg`` with ``DIR/val/<class>/...`` (or ``validation/``, ``valid/``),
* ``DIR/<class>/*.jpg``: one folder, split per class into training and held-out images by a seeded
  fraction (the same split every time for the same seed, recorded in ``model.json``).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import timm
import torch
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from mscsa_lab.data.shapes_dataset import HELD_OUT_OFFSET, SyntheticShapes
from mscsa_lab.train.config import TrainingInputError

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
]

VAL_FOLDER_NAMES = ("val", "validation", "valid")


@dataclass
class DataSource:
    """The datasets of one run before transforms are attached, and where they came from."""

    kind: str  # "synthetic" | "folders" (train/ + val/) | "split" (one folder, seeded split)
    root: str
    classes: list[str]
    train: Dataset
    val: Dataset | None
    train_count: int
    val_count: int
    description: str
    # the datasets whose .transform is set by attach_transforms (Subsets share them)
    _train_base: Any = field(default=None, repr=False)
    _val_base: Any = field(default=None, repr=False)

    def attach_transforms(self, train_transform, eval_transform) -> None:
        self._train_base.transform = train_transform
        if self._val_base is not None:
            self._val_base.transform = eval_transform

    def to_dict(self) -> dict[str, Any]:
        return dict(kind=self.kind, root=self.root, train_images=self.train_count, val_images=self.val_count,
                    description=self.description)


# ---------------------------------------------------------------------- finding the data
def _image_suffixes() -> set[str]:
    return {s.lower() for s in get_img_extensions(as_set=True)}


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name -> image files (searched recursively) for each sub-folder of ``folder``."""
    suffixes = _image_suffixes()
    classes: dict[str, list[Path]] = {}
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in child.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        classes[child.name] = files
    return classes


def _check_classes(folder: Path, classes: dict[str, list[Path]], role: str, known: Sequence[str] | None = None) -> None:
    suffixes = " ".join(sorted(_image_suffixes()))
    if not classes:
        loose = [p for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in _image_suffixes() and not p.name.startswith(".")]
        hint = (f" ({len(loose)} images lie directly in it: put each class's images in a sub-folder named "
                f"after the class)") if loose else ""
        raise TrainingInputError(f"{role} folder {str(folder)!r} has no class sub-folders{hint}; expected "
                                 f"{folder}/<class name>/<images>")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise TrainingInputError(f"{role} folder {str(folder)!r}: class folder(s) {', '.join(empty)} hold no "
                                 f"images (looked for {suffixes})")
    if known is not None:
        unknown = sorted(set(classes) - set(known))
        if unknown:
            raise TrainingInputError(f"{role} folder {str(folder)!r} has classes the model was not trained on: "
                                     f"{', '.join(unknown)} (it knows {', '.join(known)})")
        return
    if len(classes) < 2:
        only = next(iter(classes))
        raise TrainingInputError(f"{role} folder {str(folder)!r} has one class ({only!r}): a classifier needs at "
                                 f"least two class folders of images")


def _stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): per class, a seeded shuffle and round(fraction * n) held out
    (at least one per class with two or more images, and never the class's last training image)."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    rng = random.Random(seed)
    train, held = [], []
    for target in sorted(by_class):
        indices = list(by_class[target])
        rng.shuffle(indices)
        count = len(indices)
        n_held = min(max(1, round(fraction * count)), count - 1) if count >= 2 else 0
        held.extend(indices[:n_held])
        train.extend(indices[n_held:])
    return sorted(train), sorted(held)


def scan_data(data: str, *, synthetic_size: int = 96, synthetic_train: int = 2000, synthetic_val: int = 500,
              val_fraction: float = 0.2, seed: int = 0, split: str = "train",
              classes: Sequence[str] | None = None) -> DataSource:
    """Find the images and classes of ``data`` ("synthetic" or a folder), with clear errors.

    ``split="all"`` (evaluation) makes both parts of a single folder every image instead of the
    seeded split. ``classes`` (evaluation) fixes the class order to a trained model's: folders
    may hold a subset of them, but no others.
    """
    if str(data).strip().lower() == "synthetic":
        train = SyntheticShapes(synthetic_train, synthetic_size, seed=seed, offset=0)
        val = (SyntheticShapes(synthetic_val, synthetic_size, seed=seed, offset=HELD_OUT_OFFSET)
               if synthetic_val else None)
        return DataSource("synthetic", "synthetic", list(SyntheticShapes.classes), train, val, synthetic_train,
                          synthetic_val, f"synthetic shapes: {synthetic_train} training and {synthetic_val} held-out "
                          f"images at {synthetic_size} px (seed {seed})", train, val)

    root = Path(data).expanduser()
    if not root.exists():
        raise TrainingInputError(f"data folder {str(root)!r} does not exist (give an image folder or 'synthetic')")
    if not root.is_dir():
        raise TrainingInputError(f"data {str(root)!r} is a file: give a folder of class folders, or 'synthetic'")
    train_dir = root / "train"
    val_dir = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if train_dir.is_dir():
        train_classes = _class_folders(train_dir)
        _check_classes(train_dir, train_classes, "training", classes)
        class_to_idx = {name: i for i, name in enumerate(classes if classes is not None else train_classes)}
        train = create_dataset("", root=str(train_dir), split="train", search_split=False, class_map=class_to_idx)
        val = None
        if val_dir is not None:
            val_classes = _class_folders(val_dir)
            unknown = sorted(set(val_classes) - set(class_to_idx))
            if unknown:
                raise TrainingInputError(f"validation folder {str(val_dir)!r} has classes the training folder lacks: "
                                         f"{', '.join(unknown)}")
            if sum(len(v) for v in val_classes.values()):
                val = create_dataset("", root=str(val_dir), split="validation", search_split=False,
                                     class_map=class_to_idx)
        description = f"{train_dir} ({len(train)} images)" + (f", {val_dir} ({len(val)} images)" if val else "")
        return DataSource("folders", str(root), list(class_to_idx), train, val, len(train), len(val) if val else 0,
                          description, train, val)

    found = _class_folders(root)
    _check_classes(root, found, "data", classes)
    class_to_idx = {name: i for i, name in enumerate(classes if classes is not None else found)}
    train_base = create_dataset("", root=str(root), split="train", search_split=False, class_map=class_to_idx)
    val_base = create_dataset("", root=str(root), split="validation", search_split=False, class_map=class_to_idx)
    targets = [target for _, target in train_base.reader.samples]
    if split == "all":
        indices = list(range(len(targets)))
        return DataSource("split", str(root), list(class_to_idx), Subset(train_base, indices),
                          Subset(val_base, indices), len(indices), len(indices),
                          f"{root}: all {len(indices)} images", train_base, val_base)
    train_idx, held_idx = _stratified_split(targets, val_fraction, seed)
    if not train_idx:
        raise TrainingInputError(f"data folder {str(root)!r} has too few images to train on")
    return DataSource(
        "split", str(root), list(class_to_idx), Subset(train_base, train_idx),
        Subset(val_base, held_idx) if held_idx else None, len(train_idx), len(held_idx),
        f"{root}: {len(train_idx)} training and {len(held_idx)} held-out images (seeded split, "
        f"fraction {val_fraction}, seed {seed})", train_base, val_base if held_idx else None,
    )


# ---------------------------------------------------------------------- images without labels
class ImageFiles(Dataset):
    """Image files as ``(image, 0)`` items (the label is unused): the data of a distillation run,
    whose targets come from the teacher. Photos are turned upright by their EXIF orientation."""

    def __init__(self, files: Sequence[Path], transform=None) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image, ImageOps, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise TrainingInputError(f"image {str(path)!r} cannot be read ({error}): remove or replace it") from None
        return (self.transform(image) if self.transform is not None else image), 0


def _image_files(folder: Path) -> list[Path]:
    suffixes = _image_suffixes()
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_images(data: str, *, val_fraction: float = 0.2, seed: int = 0, synthetic_size: int = 96,
                synthetic_train: int = 2000, synthetic_val: int = 500) -> DataSource:
    """Images without labels (distillation): every image under ``data``, flat or in sub-folders of
    any names; ``train/`` beside ``val/`` keeps that split, otherwise a seeded ``val_fraction`` of
    the images is held out (none when there is a single image). ``"synthetic"``: the shapes."""
    if str(data).strip().lower() == "synthetic":
        source = scan_data(data, synthetic_size=synthetic_size, synthetic_train=synthetic_train,
                           synthetic_val=synthetic_val, seed=seed)
        source.classes = []
        return source
    root = Path(data).expanduser()
    if not root.is_dir():
        raise TrainingInputError(f"data folder {str(root)!r} does not exist" if not root.exists() else
                                 f"data {str(root)!r} is a file: give a folder of images")
    val_dir = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_files, held_files = _image_files(root / "train"), _image_files(val_dir)
        kind, how = "folders", f"{root / 'train'} and {val_dir}"
    else:
        files = _image_files(root)
        order = list(range(len(files)))
        random.Random(seed).shuffle(order)
        n_held = min(max(1, round(val_fraction * len(files))), len(files) - 1) if len(files) >= 2 else 0
        held_files = sorted(files[i] for i in order[:n_held])
        train_files = sorted(files[i] for i in order[n_held:])
        kind, how = "split", f"{root} (seeded split, fraction {val_fraction}, seed {seed})"
    if not train_files:
        suffixes = " ".join(sorted(_image_suffixes()))
        raise TrainingInputError(f"no images in {str(root)!r} (looked for {suffixes}, in it and its sub-folders)")
    train, held = ImageFiles(train_files), ImageFiles(held_files) if held_files else None
    description = f"{how}: {len(train_files)} training and {len(held_files)} held-out images (labels unused)"
    return DataSource(kind, str(root), [], train, held, len(train_files), len(held_files), description, train, held)


def repeat_dataset(dataset: Dataset, times: int) -> Dataset:
    """``dataset`` with every item ``times`` times in each epoch (each time with its own augmentation)."""
    if times <= 1:
        return dataset
    return Subset(dataset, [i for _ in range(times) for i in range(len(dataset))])


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
