"""The synthetic shapes (``mscsa_lab.data.synthetic``) as a ``torch.utils.data.Dataset``.

Each item is ``(PIL image, label)`` like torchvision's and timm's folder datasets, so the same
timm transforms apply. Item ``i`` is ``make_sample(offset + i, seed, size)``: a pure function of
its index, so a training split (offset 0) and a held-out split (``HELD_OUT_OFFSET``) never overlap
and nothing is stored on disk.

Making a sample takes about 4 ms (Python drawing), as long as a small model's forward pass on it, and
an ablation study evaluates every variant on the same held-out images: the pixels of recent samples
are kept in memory (``SampleCache``, 64 MiB, per process), so the second variant reads them instead.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mscsa_lab.data.synthetic import CLASSES, make_sample
from mscsa_lab.errors import UserError

__all__ = ["SyntheticShapes", "HELD_OUT_OFFSET", "SyntheticDataError", "write_shapes_folder"]


class SyntheticDataError(UserError, ValueError):
    """A synthetic data set that cannot be made (no images, images too small)."""

HELD_OUT_OFFSET = 1_000_000  # the demo model's held-out samples start here too


class SampleCache:
    """(pixels, label) of recently made samples by their arguments, least recently used out first, at most
    ``budget_bytes`` of pixels. The pixels are read-only: a sample is the same every time it is read."""

    def __init__(self, budget_bytes: int = 64 * 2**20) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: "OrderedDict[tuple, tuple[np.ndarray, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def sample(self, index: int, seed: int, size: int, min_fraction: float,
               max_fraction: float) -> tuple[np.ndarray, int]:
        key = (index, seed, size, min_fraction, max_fraction)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        made = make_sample(index, seed, size, min_fraction, max_fraction)
        pixels = made.image
        pixels.flags.writeable = False
        with self._lock:
            if key not in self._items and pixels.nbytes <= self.budget_bytes:
                self._items[key] = (pixels, made.label)
                self._bytes += pixels.nbytes
                while self._bytes > self.budget_bytes:
                    self._bytes -= self._items.popitem(last=False)[1][0].nbytes
        return pixels, made.label

    def __len__(self) -> int:
        return len(self._items)


SAMPLES = SampleCache()


class SyntheticShapes(Dataset):
    """``count`` synthetic images of ``size`` x ``size`` pixels, labels index ``CLASSES``."""

    classes = list(CLASSES)

    def __init__(self, count: int, size: int = 96, seed: int = 0, offset: int = 0,
                 transform: Callable[[Image.Image], Any] | None = None,
                 min_fraction: float = 0.12, max_fraction: float = 0.8) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SyntheticDataError(f"the synthetic set needs at least one image, got count={count!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise SyntheticDataError(f"synthetic images must be at least 8 pixels wide, got size={size!r}")
        self.count = count
        self.size = size
        self.seed = seed
        self.offset = offset
        self.transform = transform
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} is out of range for {self.count} images")
        index %= self.count
        pixels, label = SAMPLES.sample(self.offset + index, self.seed, self.size, self.min_fraction, self.max_fraction)
        image = Image.fromarray(pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def write_shapes_folder(root: str | Path, count: int, size: int = 96, seed: int = 0, offset: int = 0,
                        flat: bool = False, boxes: bool = False, min_fraction: float = 0.12,
                        max_fraction: float = 0.8) -> Path:
    """Write ``count`` synthetic images as PNGs: ``root/<class>/<i>.png`` (an image folder timm's
    and torchvision's readers take), or with ``flat`` all in ``root`` (an unlabelled folder).
    ``boxes`` also writes ``root/boxes.json``: file name (relative to ``root``) -> class, box
    (x0, y0, x1, y1, exclusive) and object size, for scoring where a map points. ``min_fraction``
    / ``max_fraction``: the object's side as a share of the image's (``make_sample``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = {}
    for i in range(count):
        sample = make_sample(offset + i, seed, size, min_fraction, max_fraction)
        name = f"{offset + i:07d}.png"
        relative = Path(name) if flat else Path(CLASSES[sample.label]) / name
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(root / relative)
        records[relative.as_posix()] = {"label": CLASSES[sample.label], "box": list(sample.box),
                                        "size_fraction": round(sample.size_fraction, 4)}
    if boxes:
        (root / "boxes.json").write_text(json.dumps(records, indent=1) + "\n")
    return root
