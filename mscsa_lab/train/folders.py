"""The images of a run: an image folder (labelled by class folders, or any images for distillation)
or the synthetic shapes, found with a bounded walk (``mscsa_lab.train.scan``) and read through the
guarded image reader (``mscsa_lab.io.images.load_image`` with the data folder as root).

Folders come in two layouts:

* ``DIR/train/<class>/*.jpg`` with ``DIR/val/<class>/...`` (or ``validation/``, ``valid/``),
* ``DIR/<class>/*.jpg``: one folder, split per class into training and held-out images by a seeded
  fraction (the same split every time for the same seed, recorded in ``model.json``).

Images are taken in the order timm's folder reader gives (natural order of their paths), so a
seeded split is the one earlier versions made with timm's reader.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset, Subset

from mscsa_lab.data.shapes_dataset import HELD_OUT_OFFSET, SyntheticShapes
from mscsa_lab.io.guarded import shown_name
from mscsa_lab.stopping import StopFlag
from mscsa_lab.train.config import TrainingInputError
from mscsa_lab.train.scan import IMAGE_SUFFIXES, MAX_SCAN_FILES, MAX_SCAN_SECONDS, FolderScan

__all__ = ["DataSource", "ImageFiles", "scan_data", "scan_images", "repeat_dataset", "VAL_FOLDER_NAMES"]

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
    notes: list[str] = field(default_factory=list)  # what the scan left out (links out of the folder, loops)

    def attach_transforms(self, train_transform, eval_transform) -> None:
        self._train_base.transform = train_transform
        if self._val_base is not None:
            self._val_base.transform = eval_transform

    def to_dict(self) -> dict[str, Any]:
        return dict(kind=self.kind, root=self.root, train_images=self.train_count, val_images=self.val_count,
                    description=self.description)


class ImageFiles(Dataset):
    """Image files as ``(image, target)`` items, each read through ``load_image`` (size cap, allowed
    formats only, EXIF orientation, RGB) and, with ``root``, only from inside that folder. Without
    ``targets`` every target is 0 (distillation: the teacher gives the targets). ``files`` are kept as
    given (the scans give strings: a million ``Path`` objects would cost seconds)."""

    def __init__(self, files: Sequence[str | Path], transform=None, targets: Sequence[int] | None = None,
                 root: str | Path | None = None) -> None:
        self.files = list(files)
        self.targets = list(targets) if targets is not None else [0] * len(self.files)
        self.root = root
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from mscsa_lab.errors import UserError
        from mscsa_lab.io.images import load_image

        path = self.files[index]
        try:
            image = load_image(path, root=self.root)
        except UserError as error:
            raise TrainingInputError(f"image {shown_name(path)} cannot be read ({error}): remove or replace it") \
                from None
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _suffixes_text() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def _class_folders(scan: FolderScan, folder: Path) -> tuple[dict[str, list[str]], int]:
    """(class name -> its image files, every level) for each visible sub-folder of ``folder``, and
    how many images lie directly in ``folder``."""
    classes: dict[str, list[Path]] = {}
    loose = 0
    scan.enter(folder)
    for path, is_folder in scan.entries(folder):
        if is_folder:
            classes[os.path.basename(path)] = scan.files(path)
        elif os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
            loose += 1
    return dict(sorted(classes.items())), loose


def _check_classes(folder: Path, classes: dict[str, list[str]], loose: int, role: str,
                   known: Sequence[str] | None = None) -> None:
    if not classes:
        hint = (f" ({loose} images lie directly in it: put each class's images in a sub-folder named "
                f"after the class)") if loose else ""
        raise TrainingInputError(f"{role} folder {str(folder)!r} has no class sub-folders{hint}; expected "
                                 f"{folder}/<class name>/<images>")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise TrainingInputError(f"{role} folder {str(folder)!r}: class folder(s) {', '.join(empty)} hold no "
                                 f"images (looked for {_suffixes_text()})")
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


def _labelled(classes: dict[str, list[str]], class_to_idx: dict[str, int], root: Path) -> ImageFiles:
    """One dataset of every class's images, in natural order of their paths (timm's order)."""
    from timm.utils.misc import natural_key

    samples = sorted(((path, class_to_idx[name]) for name, files in classes.items() for path in files),
                     key=lambda item: natural_key(item[0]))
    return ImageFiles([p for p, _ in samples], targets=[t for _, t in samples], root=root)


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


def _data_root(data: str, what: str) -> Path:
    root = Path(data).expanduser()
    if not root.exists():
        raise TrainingInputError(f"data folder {str(root)!r} does not exist (give an image folder or 'synthetic')")
    if not root.is_dir():
        raise TrainingInputError(f"data {str(root)!r} is a file: give {what}, or 'synthetic'")
    return root


def _synthetic(synthetic_size: int, synthetic_train: int, synthetic_val: int, seed: int) -> DataSource:
    train = SyntheticShapes(synthetic_train, synthetic_size, seed=seed, offset=0)
    val = SyntheticShapes(synthetic_val, synthetic_size, seed=seed, offset=HELD_OUT_OFFSET) if synthetic_val else None
    return DataSource("synthetic", "synthetic", list(SyntheticShapes.classes), train, val, synthetic_train,
                      synthetic_val, f"synthetic shapes: {synthetic_train} training and {synthetic_val} held-out "
                      f"images at {synthetic_size} px (seed {seed})", train, val)


def scan_data(data: str, *, synthetic_size: int = 96, synthetic_train: int = 2000, synthetic_val: int = 500,
              val_fraction: float = 0.2, seed: int = 0, split: str = "train", classes: Sequence[str] | None = None,
              stop: StopFlag = None, max_files: int = MAX_SCAN_FILES,
              max_seconds: float = MAX_SCAN_SECONDS) -> DataSource:
    """Find the images and classes of ``data`` ("synthetic" or a folder), with clear errors.

    ``split="all"`` (evaluation) makes both parts of a single folder every image instead of the
    seeded split. ``classes`` (evaluation) fixes the class order to a trained model's: folders
    may hold a subset of them, but no others. ``stop``, ``max_files``, ``max_seconds``: see
    ``mscsa_lab.train.scan``.
    """
    if str(data).strip().lower() == "synthetic":
        return _synthetic(synthetic_size, synthetic_train, synthetic_val, seed)
    root = _data_root(data, "a folder of class folders")
    scan = FolderScan(root, max_files, max_seconds, stop)
    train_dir = root / "train"
    val_dir = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if train_dir.is_dir():
        scan.enter(root)  # a link back to the data folder is not walked again
        train_classes, loose = _class_folders(scan, train_dir)
        _check_classes(train_dir, train_classes, loose, "training", classes)
        class_to_idx = {name: i for i, name in enumerate(classes if classes is not None else train_classes)}
        train = _labelled(train_classes, class_to_idx, scan.root)
        val = None
        if val_dir is not None:
            val_classes, _ = _class_folders(scan, val_dir)
            unknown = sorted(set(val_classes) - set(class_to_idx))
            if unknown:
                raise TrainingInputError(f"validation folder {str(val_dir)!r} has classes the training folder lacks: "
                                         f"{', '.join(unknown)}")
            if sum(len(v) for v in val_classes.values()):
                val = _labelled(val_classes, class_to_idx, scan.root)
        description = f"{train_dir} ({len(train)} images)" + (f", {val_dir} ({len(val)} images)" if val else "")
        return DataSource("folders", str(root), list(class_to_idx), train, val, len(train), len(val) if val else 0,
                          description, train, val, scan.notes())

    found, loose = _class_folders(scan, root)
    _check_classes(root, found, loose, "data", classes)
    class_to_idx = {name: i for i, name in enumerate(classes if classes is not None else found)}
    train_base = _labelled(found, class_to_idx, scan.root)
    val_base = ImageFiles(train_base.files, targets=train_base.targets, root=scan.root)
    if split == "all":
        indices = list(range(len(train_base)))
        return DataSource("split", str(root), list(class_to_idx), Subset(train_base, indices),
                          Subset(val_base, indices), len(indices), len(indices),
                          f"{root}: all {len(indices)} images", train_base, val_base, scan.notes())
    train_idx, held_idx = _stratified_split(train_base.targets, val_fraction, seed)
    if not train_idx:
        raise TrainingInputError(f"data folder {str(root)!r} has too few images to train on")
    return DataSource(
        "split", str(root), list(class_to_idx), Subset(train_base, train_idx),
        Subset(val_base, held_idx) if held_idx else None, len(train_idx), len(held_idx),
        f"{root}: {len(train_idx)} training and {len(held_idx)} held-out images (seeded split, "
        f"fraction {val_fraction}, seed {seed})", train_base, val_base if held_idx else None, scan.notes(),
    )


def scan_images(data: str, *, val_fraction: float = 0.2, seed: int = 0, synthetic_size: int = 96,
                synthetic_train: int = 2000, synthetic_val: int = 500, stop: StopFlag = None,
                max_files: int = MAX_SCAN_FILES, max_seconds: float = MAX_SCAN_SECONDS) -> DataSource:
    """Images without labels (distillation): every image under ``data``, flat or in sub-folders of
    any names; ``train/`` beside ``val/`` keeps that split, otherwise a seeded ``val_fraction`` of
    the images is held out (none when there is a single image). ``"synthetic"``: the shapes."""
    if str(data).strip().lower() == "synthetic":
        source = _synthetic(synthetic_size, synthetic_train, synthetic_val, seed)
        source.classes = []
        return source
    root = _data_root(data, "a folder of images")
    scan = FolderScan(root, max_files, max_seconds, stop)
    val_dir = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        scan.enter(root)  # a link back to the data folder is not walked again
        train_files, held_files = _path_order(scan.files(root / "train")), _path_order(scan.files(val_dir))
        kind, how = "folders", f"{root / 'train'} and {val_dir}"
    else:
        files = _path_order(scan.files(root))
        order = list(range(len(files)))
        random.Random(seed).shuffle(order)
        n_held = min(max(1, round(val_fraction * len(files))), len(files) - 1) if len(files) >= 2 else 0
        held_files = _path_order([files[i] for i in order[:n_held]])
        train_files = _path_order([files[i] for i in order[n_held:]])
        kind, how = "split", f"{root} (seeded split, fraction {val_fraction}, seed {seed})"
    if not train_files:
        raise TrainingInputError(f"no images in {str(root)!r} (looked for {_suffixes_text()}, in it and its "
                                 f"sub-folders)")
    train = ImageFiles(train_files, root=scan.root)
    held = ImageFiles(held_files, root=scan.root) if held_files else None
    description = f"{how}: {len(train_files)} training and {len(held_files)} held-out images (labels unused)"
    return DataSource(kind, str(root), [], train, held, len(train_files), len(held_files), description, train, held,
                      scan.notes())


def _path_order(paths: list[str]) -> list[str]:
    """Paths in ``pathlib``'s order (folder by folder), the order of the unlabelled splits made so far."""
    return sorted(paths, key=lambda path: path.split(os.sep))


def repeat_dataset(dataset: Dataset, times: int) -> Dataset:
    """``dataset`` with every item ``times`` times in each epoch (each time with its own augmentation)."""
    if times <= 1:
        return dataset
    return Subset(dataset, [i for _ in range(times) for i in range(len(dataset))])
