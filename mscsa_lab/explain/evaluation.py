"""Do the per-scale maps point at the object? Measured on held-out synthetic images, whose boxes are
known: how often each scale's map peaks inside the box, and how large its hot region is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mscsa_lab.explain.saliency import compute_saliency
from mscsa_lab.data.synthetic import make_sample

__all__ = ["LocalisationReport", "evaluate_localisation", "hot_area"]


def hot_area(saliency: np.ndarray, level: float = 0.5) -> float:
    """Fraction of the image where the map is above ``level`` of its range (min-max scaled)."""
    low, high = float(saliency.min()), float(saliency.max())
    if high <= low:
        return 1.0
    return float(((saliency - low) / (high - low) >= level).mean())


@dataclass
class LocalisationReport:
    method: str
    kind: str
    images: int
    peak_in_box: list[float]  # per scale, fraction of images
    peak_in_box_combined: float  # the mean of the scales' min-max scaled maps
    hot_area_large: list[float]  # per scale, mean hot fraction on large objects
    large_images: int
    accuracy: float

    def lines(self) -> list[str]:
        scales = ", ".join(f"X{i} {100 * v:.1f}%" for i, v in enumerate(self.peak_in_box))
        areas = ", ".join(f"X{i} {100 * v:.1f}%" for i, v in enumerate(self.hot_area_large))
        return [
            f"{self.method} on {self.kind}: peak inside the object's box on {scales}; scales combined "
            f"{100 * self.peak_in_box_combined:.1f}% ({self.images} held-out images, accuracy {100 * self.accuracy:.1f}%)",
            f"hot region (>= 50% of the range) on {self.large_images} large objects: {areas} of the image",
        ]


def evaluate_localisation(model, meta: dict, count: int = 100, method: str = "gradxact", kind: str = "key",
                          block: int = 0, layer: int = 1, large: float = 0.5, offset: int | None = None) -> LocalisationReport:
    """Run ``method`` on ``count`` held-out synthetic images (target: the true class)."""
    size = int(meta["input_size"][0])
    seed = int(meta.get("seed", 0))
    start = int(offset if offset is not None else meta.get("held_out_offset", 1_000_000))
    mean = torch.tensor(meta["preprocessing"]["mean"])[:, None, None]
    std = torch.tensor(meta["preprocessing"]["std"])[:, None, None]
    hits: list[list[bool]] = []
    combined_hits: list[bool] = []
    areas: list[list[float]] = []
    correct = 0
    for index in range(count):
        sample = make_sample(start + index, seed, size)
        tensor = ((torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0 - mean) / std).unsqueeze(0)
        result = compute_saliency(model, tensor, method, kind, block, layer, target=sample.label)
        correct += int(int(np.argmax(result.probabilities)) == sample.label)
        x0, y0, x1, y1 = sample.box

        def inside(saliency: np.ndarray) -> bool:
            row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
            return bool(x0 <= col < x1 and y0 <= row < y1)

        hits.append([inside(m) for m in result.maps])
        scaled = [(m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m) for m in result.maps]
        combined_hits.append(inside(np.mean(scaled, axis=0)))
        if sample.size_fraction >= large:
            areas.append([hot_area(m) for m in result.maps])
    per_scale = np.mean(np.asarray(hits, dtype=float), axis=0).tolist()
    area_means = np.mean(np.asarray(areas), axis=0).tolist() if areas else [float("nan")] * len(per_scale)
    return LocalisationReport(method, kind, count, per_scale, float(np.mean(combined_hits)), area_means, len(areas),
                              correct / count)
