"""A multi-scale synthetic dataset: one object of a few classes on a cluttered background, at very
different sizes and positions, with its bounding box. It gives the demo model something to learn
without any download, and gives the saliency tests a ground truth (the box).

Every sample is a pure function of (index, seed), so train and held-out splits never overlap and
nothing needs to be stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CLASSES", "SyntheticSample", "make_sample"]

CLASSES = ("circle", "square", "triangle", "cross", "star")


@dataclass
class SyntheticSample:
    image: np.ndarray  # H x W x 3 uint8
    label: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    size_fraction: float  # object side / image side


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    def rotate(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == "square":
        r = radius / math.sqrt(2) * 1.2
        return rotate([(-r, -r), (r, -r), (r, r), (-r, r)])
    if kind == "triangle":
        return rotate([(radius * math.cos(a), radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if kind == "star":
        points = []
        for i in range(10):
            r = radius if i % 2 == 0 else radius * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            points.append((r * math.cos(a), r * math.sin(a)))
        return rotate(points)
    if kind == "cross":
        w = radius * 0.33
        r = radius
        return rotate([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                       (-r, -w), (-w, -w)])
    raise ValueError(kind)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, count: int) -> None:
    """Thin lines, small dots and arcs: texture that is none of the classes."""
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(40, 216, 3))
        kind = rng.integers(0, 3)
        x0, y0 = rng.uniform(0, size, 2)
        if kind == 0:
            length, angle = rng.uniform(size * 0.05, size * 0.3), rng.uniform(0, 2 * math.pi)
            draw.line([(x0, y0), (x0 + length * math.cos(angle), y0 + length * math.sin(angle))], fill=colour,
                      width=int(rng.integers(1, 3)))
        elif kind == 1:
            r = rng.uniform(1, max(1.5, size * 0.015))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        else:
            r = rng.uniform(size * 0.03, size * 0.12)
            start = rng.uniform(0, 360)
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(30, 120), fill=colour, width=1)


def make_sample(index: int, seed: int = 0, size: int = 128, min_fraction: float = 0.12,
                max_fraction: float = 0.8) -> SyntheticSample:
    """Sample ``index`` of the dataset with ``seed``: object side between ``min_fraction`` and
    ``max_fraction`` of the image (log-uniform, so small and large objects are equally common)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(0, len(CLASSES)))
    # Background: a random two-colour gradient with clutter, lightly blurred.
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(size, axis=1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng, size, int(rng.integers(15, 40)))
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    draw = ImageDraw.Draw(image)

    fraction = math.exp(rng.uniform(math.log(min_fraction), math.log(max_fraction)))
    radius = fraction * size / 2
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    mean_background = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
    colour = np.where(mean_background > 128, rng.integers(0, 90, 3), rng.integers(166, 256, 3))
    fill = tuple(int(c) for c in colour)
    kind = CLASSES[label]
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, radius, float(rng.uniform(0, 2 * math.pi))), fill=fill)
    # A few clutter strokes over the object too, so it is not a clean silhouette.
    _clutter(draw, rng, size, int(rng.integers(0, 6)))
    pixels = np.asarray(image, dtype=np.uint8).copy()
    box = (max(0, int(cx - radius)), max(0, int(cy - radius)), min(size, int(math.ceil(cx + radius)) + 1),
           min(size, int(math.ceil(cy + radius)) + 1))
    return SyntheticSample(pixels, label, box, fraction)

