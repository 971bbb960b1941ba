"""Do the per-scale maps point at the object? Scored on the token grids themselves, on held-out
synthetic images whose boxes are known, with the chance figures beside every score.

Why on the grid: a map upsampled from a coarse grid is flat over each cell, so the first pixel of
its maximum is the top-left corner of the hottest cell; scored that way a 2x2 map loses to a random
pixel. Here the hottest cell (all of them when several tie, each counting for its share) is a hit
when its centre lies inside the box; by default the centres of the aligned layout (a coarse token
where its convolution centres it, see :mod:`mscsa_lab.explain.geometry`). Beside each figure: the *random* baseline (a cell drawn at
random: the share of cells whose centre is in the box) and the *centre* baseline (the cell(s)
nearest the picture's centre). The former pixel rule is still reported, with its own baselines.

The paper's Fig. 1b claim (coarser scales cover whole objects, finer ones parts) is measured as
the area above half maximum per scale: the share of the picture's cells whose value is at least
half the map's maximum (half its range for maps with negative values). One cell is the floor of
that area, and a coarse cell is large (1/16 of the image on a 4x4 grid): ``cell_area`` gives it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch

from mscsa_lab.data.synthetic import SyntheticSample, make_sample
from mscsa_lab.explain.geometry import Box, ScaleGeometry
from mscsa_lab.explain.methods import attribute_all

__all__ = ["peak_cells", "peak_in_box", "pixel_peak_in_box", "random_cell_in_box", "centre_cell_in_box",
           "area_above_half_max", "box_coverage", "hot_area", "held_out_samples", "LocalisationReport",
           "evaluate_localisation"]


def peak_cells(grid: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the highest valid cell(s); ties (within float rounding) all count."""
    values = np.where(valid if valid is not None else True, grid.astype(np.float64), -np.inf)
    top = values.max()
    spread = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    return values >= top - 1e-6 * max(spread, 1e-30)


def _inside(ys: np.ndarray, xs: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def _layout(grid_shape: tuple[int, int], where: ScaleGeometry | tuple[int, int]) -> ScaleGeometry:
    """A geometry as given, or the tiled layout over an input of size ``where``."""
    return where if isinstance(where, ScaleGeometry) else ScaleGeometry(tuple(grid_shape), tuple(where))


def peak_in_box(grid: np.ndarray, box: Box, where: ScaleGeometry | tuple[int, int],
                valid: np.ndarray | None = None) -> float:
    """Share of the highest cells whose centre lies inside ``box`` (1.0 or 0.0 without ties).
    ``where``: the scale's :class:`ScaleGeometry`, or the input size (tiled layout)."""
    peaks = peak_cells(grid, valid)
    ys, xs = _layout(grid.shape, where).centres()
    return float(_inside(ys, xs, box)[peaks].mean())


def pixel_peak_in_box(full_map: np.ndarray, box: Box) -> float:
    """The former rule: is the first maximum pixel of the upsampled map inside ``box``?"""
    row, col = np.unravel_index(int(np.nanargmax(full_map)), full_map.shape)
    x0, y0, x1, y1 = box
    return float(x0 <= col < x1 and y0 <= row < y1)


def random_cell_in_box(grid_shape: tuple[int, int], box: Box, where: ScaleGeometry | tuple[int, int],
                       valid: np.ndarray | None = None) -> float:
    """Chance: the share of (valid) cells whose centre lies inside ``box``."""
    ys, xs = _layout(grid_shape, where).centres()
    mask = valid if valid is not None else np.ones(grid_shape, bool)
    return float(_inside(ys, xs, box)[mask].mean())


def centre_cell_in_box(grid_shape: tuple[int, int], box: Box, where: ScaleGeometry | tuple[int, int],
                       valid: np.ndarray | None = None, picture: Box | None = None) -> float:
    """A map that always points at the middle: the (valid) cells nearest the picture's centre, ties shared."""
    layout = _layout(grid_shape, where)
    height, width = layout.input_size
    px0, py0, px1, py1 = picture or (0, 0, width, height)
    ys, xs = layout.centres()
    distance = np.hypot(ys - (py0 + py1) / 2, xs - (px0 + px1) / 2)
    if valid is not None:
        distance = np.where(valid, distance, np.inf)
    nearest = distance <= distance.min() + 1e-9
    return float(_inside(ys, xs, box)[nearest].mean())


def _half_level(values: np.ndarray) -> float:
    high, low = float(values.max()), float(values.min())
    floor = min(low, 0.0)
    return floor + 0.5 * (high - floor)


def area_above_half_max(grid: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Share of the picture's cells at or above half the map's maximum (NaN for a flat map)."""
    values = grid[valid] if valid is not None else grid.ravel()
    if values.size == 0 or values.max() <= values.min():
        return float("nan")
    return float((values >= _half_level(values)).mean())


def box_coverage(grid: np.ndarray, box: Box, where: ScaleGeometry | tuple[int, int],
                 valid: np.ndarray | None = None) -> float:
    """Share of the cells centred inside ``box`` that are at or above half maximum (NaN: none, or flat)."""
    mask = valid if valid is not None else np.ones(grid.shape, bool)
    values = grid[mask]
    ys, xs = _layout(grid.shape, where).centres()
    in_box = _inside(ys, xs, box) & mask
    if not in_box.any() or values.max() <= values.min():
        return float("nan")
    return float((grid[in_box] >= _half_level(values)).mean())


def hot_area(saliency: np.ndarray, level: float = 0.5) -> float:
    """Fraction of a full-size map at or above ``level`` of its range (min-max scaled; NaN ignored)."""
    values = saliency[np.isfinite(saliency)]
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return 1.0
    return float(((values - low) / (high - low) >= level).mean())


def held_out_samples(meta: dict, count: int, offset: int | None = None) -> Iterator[tuple[SyntheticSample, torch.Tensor]]:
    """The synthetic images a model of ``meta`` (demo model or a synthetic run) never trained on,
    with their normalised 1x3xHxW tensors."""
    size = int(meta["input_size"][0])
    seed = int(meta.get("seed", 0))
    start = int(offset if offset is not None else meta.get("held_out_offset", 1_000_000))
    mean = torch.tensor(meta["preprocessing"]["mean"])[:, None, None]
    std = torch.tensor(meta["preprocessing"]["std"])[:, None, None]
    for index in range(count):
        sample = make_sample(start + index, seed, size)
        tensor = ((torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0 - mean) / std).unsqueeze(0)
        yield sample, tensor


@dataclass
class LocalisationReport:
    method: str
    kind: str
    images: int
    peak_in_box: list[float]  # per scale, grid rule, mean over images
    centre_baseline: list[float]  # per scale: the cell(s) nearest the centre
    random_baseline: list[float]  # per scale: a random cell
    peak_in_box_combined: float  # all scales on X0's grid (each scaled to [0, 1], averaged)
    pixel_peak_in_box: list[float]  # the former rule: first argmax pixel of the upsampled map
    pixel_random_baseline: float  # a random pixel: the box's share of the image
    pixel_centre_baseline: float  # the image's centre pixel
    area_above_half_max: list[float]  # per scale, all images
    hot_area_large: list[float]  # per scale, area above half max on large objects only
    box_coverage_large: list[float]  # per scale, share of a large object's cells above half max
    large_images: int
    accuracy: float
    cell_area: list[float] = field(default_factory=list)  # per scale, one cell's share of the image (the floor)

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        def per_scale(values: list[float]) -> str:
            return ", ".join(f"X{i} {100 * v:.1f}%" for i, v in enumerate(values))

        return [
            f"{self.method} on {self.kind}, {self.images} held-out images (accuracy {100 * self.accuracy:.1f}%)",
            f"  hottest cell inside the box: {per_scale(self.peak_in_box)}; scales combined "
            f"{100 * self.peak_in_box_combined:.1f}%",
            f"    centre baseline {per_scale(self.centre_baseline)}; random baseline {per_scale(self.random_baseline)}",
            f"  former pixel rule: {per_scale(self.pixel_peak_in_box)} (random pixel "
            f"{100 * self.pixel_random_baseline:.1f}%, centre pixel {100 * self.pixel_centre_baseline:.1f}%)",
            f"  area above half maximum: {per_scale(self.area_above_half_max)} of the image (one cell: "
            f"{per_scale(self.cell_area)}); on "
            f"{self.large_images} large objects {per_scale(self.hot_area_large)}, covering "
            f"{per_scale(self.box_coverage_large)} of the object",
        ]


def evaluate_localisation(model, meta: dict, count: int = 100, method: str = "gradxact", kind: str = "key",
                          block: int = 0, layer: int = 1, large: float = 0.5, offset: int | None = None,
                          aligned: bool = True) -> LocalisationReport:
    """Run ``method`` on ``count`` held-out synthetic images (target: the true class). ``aligned``:
    cells where their convolution centres them (else the tiled layout); the pixel rule always reads
    the tiled maps, as it did."""
    rows: dict[str, list] = {name: [] for name in ("peak", "centre", "random", "combined", "pixel", "area",
                                                   "area_large", "coverage_large")}
    pixel_random, pixel_centre, correct = [], [], 0
    view = "attention" if method in ("attention", "query") else kind
    for sample, tensor in held_out_samples(meta, count, offset):
        result = attribute_all(model, tensor, [method], [kind], block, layer, target=sample.label,
                               aligned=aligned)[(method, view)]
        size = tuple(tensor.shape[-2:])
        correct += int(int(np.argmax(result.probabilities)) == sample.label)
        box = sample.box
        grids, layout = result.grid_maps, result.geometries()
        rows["peak"].append([peak_in_box(g, box, where) for g, where in zip(grids, layout)])
        rows["centre"].append([centre_cell_in_box(g.shape, box, where) for g, where in zip(grids, layout)])
        rows["random"].append([random_cell_in_box(g.shape, box, where) for g, where in zip(grids, layout)])
        rows["combined"].append(peak_in_box(result.combined_grid(), box, layout[0]))
        tiled = [ScaleGeometry(tuple(g.shape), size).upsample(torch.from_numpy(g)) for g in grids]
        rows["pixel"].append([pixel_peak_in_box(m, box) for m in tiled])
        rows["area"].append([area_above_half_max(g) for g in grids])
        x0, y0, x1, y1 = box
        pixel_random.append((x1 - x0) * (y1 - y0) / (size[0] * size[1]))
        pixel_centre.append(float(x0 <= size[1] // 2 < x1 and y0 <= size[0] // 2 < y1))
        if sample.size_fraction >= large:
            rows["area_large"].append(rows["area"][-1])
            rows["coverage_large"].append([box_coverage(g, box, where) for g, where in zip(grids, layout)])

    def mean(name: str, scales: int) -> list[float]:
        values = np.asarray(rows[name], dtype=float)
        return np.nanmean(values, axis=0).tolist() if len(values) else [float("nan")] * scales

    scales = len(rows["peak"][0])
    return LocalisationReport(
        method, kind if view != "attention" else "attention", count, mean("peak", scales), mean("centre", scales),
        mean("random", scales), float(np.mean(rows["combined"])), mean("pixel", scales), float(np.mean(pixel_random)),
        float(np.mean(pixel_centre)), mean("area", scales), mean("area_large", scales), mean("coverage_large", scales),
        len(rows["area_large"]), correct / count, [1.0 / g.size for g in grids],
    )
