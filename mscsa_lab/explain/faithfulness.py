"""Do the maps mean anything? Deletion and insertion curves (Petsiuk et al., RISE, 2018).

*Deletion*: remove the most salient pixels first (replace them by a baseline image) and follow the
target's probability as more goes; a faithful map makes it fall fast, so a *lower* area under the
curve is better. *Insertion*: start from the baseline and reveal the most salient pixels first; a
faithful map makes the probability rise fast, so a *higher* area is better.

Every scale's map, the scales combined, and two maps that know nothing are scored side by side:
``random`` (random values on X0's grid, drawn like the real maps) and ``centre`` (the closer to the
picture's centre, the more salient). A map is worth reading when it beats both. Baselines as in
RISE: deletion replaces pixels by the mean colour (zero after normalisation), insertion reveals
them over a strongly blurred copy. Letterbox padding is never touched and never counted. All
perturbed images go through the model in batches: ``steps`` (16) points per curve.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mscsa_lab.explain.capture import SaliencyError, check_image
from mscsa_lab.explain.geometry import Box, ScaleGeometry
from mscsa_lab.explain.methods import SaliencyResult
from mscsa_lab.explain.targets import TargetLike, resolve_target

__all__ = ["FaithfulnessReport", "faithfulness", "faithfulness_of", "evaluate_faithfulness", "baseline_image", "BASELINES", "REFERENCE_MAPS"]

BASELINES = ("mean", "blur")
REFERENCE_MAPS = ("random", "centre")


@dataclass
class FaithfulnessReport:
    """Areas under the deletion and insertion curves per map (``X0``.., ``combined``, ``random``,
    ``centre``); the curves themselves at ``fractions`` of the picture's pixels."""

    fractions: list[float]
    deletion: dict[str, float]
    insertion: dict[str, float]
    deletion_curves: dict[str, list[float]] = field(default_factory=dict)
    insertion_curves: dict[str, list[float]] = field(default_factory=dict)
    target: int | None = None
    target_label: str = ""
    baselines: dict[str, str] = field(default_factory=lambda: {"deletion": "mean", "insertion": "blur"})

    def beats(self, reference: str = "random") -> dict[str, bool]:
        """Per map: lower deletion area and higher insertion area than ``reference``."""
        return {name: self.deletion[name] < self.deletion[reference] and self.insertion[name] > self.insertion[reference]
                for name in self.deletion if name not in REFERENCE_MAPS}

    def as_dict(self) -> dict:
        data = asdict(self)
        data["beats_random"] = self.beats("random")
        data["beats_centre"] = self.beats("centre")
        return data

    def lines(self) -> list[str]:
        def row(areas: dict[str, float]) -> str:
            return ", ".join(f"{name} {value:.3f}" for name, value in areas.items())

        return [f"deletion area (lower is better): {row(self.deletion)}",
                f"insertion area (higher is better): {row(self.insertion)}"]


def baseline_image(image: torch.Tensor, kind: str) -> torch.Tensor:
    """``mean``: zeros (the mean colour after normalisation); ``blur``: a Gaussian blur with sigma
    1/16 of the longer side, strong enough to leave shapes unrecognisable."""
    if kind == "mean":
        return torch.zeros_like(image)
    if kind != "blur":
        raise SaliencyError(f"baseline={kind!r} is unknown: choose one of {list(BASELINES)}")
    sigma = max(image.shape[-2:]) / 16
    radius = int(min(3 * sigma, min(image.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    blurred = F.pad(image, (radius, radius, 0, 0), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.pad(blurred, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _order(saliency: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of every pixel in removal order (most salient first; ties in random order); pixels
    outside the picture rank last and are never reached."""
    flat = saliency.ravel()
    pixels = np.flatnonzero(valid.ravel())
    keys = np.nan_to_num(flat[pixels].astype(np.float64), nan=-np.inf)
    order = pixels[np.lexsort((rng.random(pixels.size), -keys))]
    ranks = np.full(flat.size, np.iinfo(np.int64).max, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(saliency.shape)


def _reference_maps(size: tuple[int, int], box: Box, grid: tuple[int, int], rng: np.random.Generator) -> dict:
    height, width = size
    x0, y0, x1, y1 = box
    random = ScaleGeometry(tuple(grid), size).upsample(torch.from_numpy(rng.random(grid).astype(np.float32)))
    ys, xs = np.mgrid[0:height, 0:width]
    centre = -np.hypot(ys + 0.5 - (y0 + y1) / 2, xs + 0.5 - (x0 + x1) / 2)
    return {"random": random, "centre": centre.astype(np.float32)}


@torch.no_grad()
def _scores(model, image: torch.Tensor, removed: torch.Tensor, hidden: torch.Tensor, masks: torch.Tensor,
            target, batch_size: int) -> np.ndarray:
    """Scores of: the image, all removed, all hidden, then each mask deleted, then each inserted;
    the perturbed copies are built one batch at a time, so memory stays at one batch."""
    count = len(masks)

    def item(index: int) -> torch.Tensor:
        if index < 3:
            return (image, removed, hidden)[index][0]
        index -= 3
        mask = masks[index % count]
        return torch.where(mask, removed[0], image[0]) if index < count else torch.where(mask, image[0], hidden[0])

    total = 3 + 2 * count
    values = []
    for start in range(0, total, batch_size):
        batch = torch.stack([item(i) for i in range(start, min(total, start + batch_size))])
        values.append(target.faithfulness_score(model(batch)))
    return torch.cat(values).float().cpu().numpy()


def faithfulness(model, image: torch.Tensor, maps: dict[str, np.ndarray], target: TargetLike = None,
                 class_names: Sequence[str] | None = None, valid_box: Box | None = None, steps: int = 16,
                 deletion_baseline: str = "mean", insertion_baseline: str = "blur", batch_size: int = 32,
                 seed: int = 0, random_grid: tuple[int, int] | None = None,
                 references: bool = True) -> FaithfulnessReport:
    """Deletion and insertion areas of each full-size map in ``maps`` (name -> H x W) for a
    1x3xHxW ``image``; with ``references``, the random and centre maps beside them.
    ``target`` as for the saliency methods (default: the top-1 class)."""
    check_image(image)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise SaliencyError(f"steps={steps!r}: the curves need at least 2 steps (16 is the default)")
    if getattr(model, "task", "classification") != "classification":
        raise SaliencyError("deletion and insertion follow a class score: build the model for classification")
    model.eval()
    height, width = image.shape[-2:]
    box = valid_box or (0, 0, width, height)
    for name, values in maps.items():
        if values.shape != (height, width):
            raise SaliencyError(f"map {name!r} is {values.shape}, the image {height}x{width}: give full-size maps")
    with torch.no_grad():
        resolved = resolve_target(target, model(image), class_names)
    rng = np.random.default_rng(seed)
    all_maps = dict(maps)
    if references:
        all_maps.update(_reference_maps((height, width), box, random_grid or (max(1, height // 8), max(1, width // 8)),
                                        rng))
    valid = np.zeros((height, width), dtype=bool)
    valid[box[1]:box[3], box[0]:box[2]] = True
    total = int(valid.sum())
    counts = [round(k * total / steps) for k in range(steps + 1)]
    removed = baseline_image(image, deletion_baseline)
    hidden = torch.where(torch.from_numpy(valid), baseline_image(image, insertion_baseline), image)
    masks = []
    for values in all_maps.values():
        ranks = torch.from_numpy(_order(values, valid, rng))
        masks.extend(ranks < count for count in counts[1:-1])
    masks = torch.stack(masks)[:, None]  # (maps x inner steps) x 1 x H x W
    scores = _scores(model, image, removed, hidden, masks, resolved, batch_size)
    full, deleted, blank = scores[:3]
    inner = steps - 1
    deletion_scores = scores[3:3 + len(masks)].reshape(len(all_maps), inner)
    insertion_scores = scores[3 + len(masks):].reshape(len(all_maps), inner)
    fractions = [count / total for count in counts]
    report = FaithfulnessReport(fractions, {}, {}, target=resolved.index, target_label=resolved.label,
                                baselines={"deletion": deletion_baseline, "insertion": insertion_baseline})
    for index, name in enumerate(all_maps):
        down = [float(full), *deletion_scores[index].tolist(), float(deleted)]
        up = [float(blank), *insertion_scores[index].tolist(), float(full)]
        report.deletion_curves[name], report.insertion_curves[name] = down, up
        report.deletion[name] = float(np.trapezoid(down, fractions))
        report.insertion[name] = float(np.trapezoid(up, fractions))
    return report


def faithfulness_of(model, image: torch.Tensor, result: SaliencyResult, target: TargetLike = None,
                    **options) -> FaithfulnessReport:
    """Deletion and insertion for one result: each scale (``X0``, ``X1``...) and ``combined``, with
    the random and centre references; the target defaults to the one the result explains."""
    maps = {f"X{i}": m for i, m in enumerate(result.maps)}
    maps["combined"] = result.combined_map()
    if target is None:
        target = result.target
    options.setdefault("valid_box", result.valid_box)
    options.setdefault("random_grid", tuple(result.grid_maps[0].shape))
    return faithfulness(model, image, maps, target, **options)


def evaluate_faithfulness(model, meta: dict, count: int = 20, method: str = "gradxact", kind: str = "key",
                          block: int = 0, layer: int = 1, steps: int = 16, offset: int | None = None,
                          aligned: bool = True) -> dict[str, dict[str, float]]:
    """Mean deletion and insertion areas per map over ``count`` held-out synthetic images (target:
    the true class): ``{"deletion": {"X0": .., "combined": .., "random": .., "centre": ..}, "insertion": {..}}``."""
    from mscsa_lab.explain.evaluation import held_out_samples
    from mscsa_lab.explain.methods import attribute_all

    view = "attention" if method in ("attention", "query") else kind
    sums: dict[str, dict[str, list[float]]] = {"deletion": {}, "insertion": {}}
    for sample, tensor in held_out_samples(meta, count, offset):
        result = attribute_all(model, tensor, [method], [kind], block, layer, target=sample.label,
                               aligned=aligned)[(method, view)]
        report = faithfulness_of(model, tensor, result, steps=steps)
        for curve in sums:
            for name, area in getattr(report, curve).items():
                sums[curve].setdefault(name, []).append(area)
    return {curve: {name: float(np.mean(values)) for name, values in areas.items()} for curve, areas in sums.items()}
