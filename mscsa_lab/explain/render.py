"""Pictures of saliency results: overlays, the per-scale grid, per-head views, attention mass.

Colours use a perceptually uniform colormap (``inferno`` by default) and every panel of maps has a
colorbar; each map is scaled to its own [min, max] for display (the raw values are in the ``.npz``).
Letterbox padding (NaN in the maps) is left uncoloured. ``paper_figure`` draws the paper's Fig. 1b
form: one row per image, the input and then one map per scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mscsa_lab.io.figures import new_figure
from mscsa_lab.explain.saliency import SaliencyError, SaliencyResult
from mscsa_lab.io.export import ExportError

__all__ = ["normalise", "overlay", "saliency_grid", "head_grid", "attention_mass_chart", "save_maps",
           "paper_figure", "faithfulness_chart", "PERCEPTUAL_CMAPS"]

PERCEPTUAL_CMAPS = ("inferno", "viridis", "magma", "plasma", "cividis")


def normalise(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] over the finite values; NaN and infinities become 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values, dtype=np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return np.where(finite, (values - low) / (high - low), 0.0).astype(np.float32)


def overlay(image: np.ndarray, saliency: np.ndarray, cmap: str = "inferno", alpha: float = 0.55) -> np.ndarray:
    """The image (H x W x 3 uint8) blended with a coloured map of the same size; where the map is
    NaN (letterbox padding) the image shows unchanged."""
    colours = matplotlib.colormaps[cmap](normalise(saliency))[..., :3]
    weight = np.where(np.isfinite(saliency), alpha, 0.0)[..., None]
    blended = (1 - weight) * image.astype(np.float32) / 255.0 + weight * colours
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def _check_cmap(cmap: str) -> None:
    if cmap not in matplotlib.colormaps:
        raise SaliencyError(f"unknown colormap {cmap!r}; perceptual choices: {list(PERCEPTUAL_CMAPS)}")


def _row_label(result: SaliencyResult, class_names: Sequence[str] | None) -> str:
    text = {"key": "keys K", "value": "values V", "attention": "attention"}[result.kind]
    label = f"{text} · {result.method}"
    if result.target is not None:
        name = class_names[result.target] if class_names and result.target < len(class_names) else \
            (result.target_label or f"class {result.target}")
        probability = result.probabilities[result.target] if result.probabilities is not None else None
        label += f"\n{name}" + (f" ({probability:.0%})" if probability is not None else "")
    elif result.target_label:
        label += f"\n{result.target_label}"
    return label


def saliency_grid(image: np.ndarray, results: Sequence[SaliencyResult], cmap: str = "inferno",
                  alpha: float = 0.55, class_names: Sequence[str] | None = None,
                  marker: tuple[float, float] | None = None) -> Figure:
    """image | scale 0 | scale 1 | scale 2 — one row per result (e.g. K and V). ``marker``: the query
    point (x, y) in ``image``'s pixels, marked on every map (default: the query cell's centre on X0
    when ``image`` is the model's input)."""
    _check_cmap(cmap)
    columns = 1 + max(len(r.maps) for r in results)
    figure, axes = new_figure(len(results), columns, figsize=(3.0 * columns + 0.8, 3.3 * len(results)), squeeze=False)
    figure.suptitle(f"MSCSA block {results[0].block}, CSA layer {results[0].layer}", fontsize=11)
    for row, result in enumerate(results):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(_row_label(result, class_names), fontsize=8)
        for column in range(1, columns):
            axis = axes[row, column]
            axis.axis("off")
            if column - 1 >= len(result.maps):
                continue
            axis.imshow(overlay(image, result.maps[column - 1], cmap, alpha))
            names = result.scale_names or [f"X{i}" for i in range(len(result.maps))]
            axis.set_title(f"scale {names[column - 1]}", fontsize=9)
            if marker is not None:
                axis.plot(*marker, marker="x", color="cyan", markersize=10, mew=2)
            elif result.query is not None and column == 1:
                height, width = image.shape[:2]
                grid_h, grid_w = result.grid_maps[0].shape
                axis.plot((result.query[1] + 0.5) * width / grid_w, (result.query[0] + 0.5) * height / grid_h,
                          marker="x", color="cyan", markersize=10, mew=2)
        axes[row, 0].axis("off")
        mappable = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
        figure.colorbar(mappable, ax=list(axes[row, 1:]), fraction=0.02, pad=0.01, label="relative saliency")
    return figure


def head_grid(image: np.ndarray, result: SaliencyResult, cmap: str = "inferno", alpha: float = 0.55) -> Figure:
    """One row per head, one column per scale (methods with per-head maps: norm, attention, query)."""
    _check_cmap(cmap)
    if result.head_maps is None:
        raise ValueError(f"{result.method} has no per-head maps: use norm, attention or query")
    heads = result.head_maps[0].shape[0]
    scales = len(result.head_maps)
    figure, axes = new_figure(heads, scales, figsize=(2.2 * scales + 0.6, 2.0 * heads), squeeze=False)
    for head in range(heads):
        for scale in range(scales):
            axis = axes[head, scale]
            axis.imshow(overlay(image, result.head_maps[scale][head], cmap, alpha))
            axis.set_xticks([])
            axis.set_yticks([])
            if head == 0:
                axis.set_title(result.scale_names[scale] if result.scale_names else f"X{scale}", fontsize=9)
            if scale == 0:
                axis.set_ylabel(f"head {head}", fontsize=9)
    mappable = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    figure.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="relative saliency")
    return figure


def attention_mass_chart(result: SaliencyResult) -> Figure:
    """Stacked bars: for each head (and the mean), the share of attention mass each scale receives."""
    if result.mass_shares is None:
        raise ValueError("attention mass shares come with the attention and query methods")
    shares = np.vstack([result.mass_shares, result.mass_shares.mean(0, keepdims=True)])
    labels = [f"head {i}" for i in range(result.mass_shares.shape[0])] + ["mean"]
    figure, axis = new_figure(figsize=(max(5, 0.6 * len(labels) + 2), 3.5))
    bottom = np.zeros(len(labels))
    colours = matplotlib.colormaps["viridis"](np.linspace(0.15, 0.85, shares.shape[1]))
    for scale in range(shares.shape[1]):
        name = result.scale_names[scale] if result.scale_names else f"X{scale}"
        axis.bar(labels, shares[:, scale], bottom=bottom, color=colours[scale], label=name)
        bottom += shares[:, scale]
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of attention mass")
    from mscsa_lab.io.figures import wrapped_title

    axis.set_title(wrapped_title(f"Attention received per scale (block {result.block}, CSA {result.layer})",
                                 figure.get_figwidth()))
    axis.legend(fontsize=8, loc="upper right")
    axis.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    return figure


def save_maps(result: SaliencyResult, path: str | Path) -> Path:
    """Raw maps as ``.npz`` (all arrays) or ``.npy`` (the full-size maps stacked: scales x H x W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez_compressed(path, **result.as_arrays())
    elif path.suffix == ".npy":
        np.save(path, np.stack(result.maps))
    else:
        raise ExportError(f"raw maps are saved as .npz or .npy, not {path.suffix or 'no suffix'!r}")
    return path



def paper_figure(rows: Sequence[tuple[np.ndarray, SaliencyResult, str]], cmap: str = "inferno",
                 alpha: float = 0.55) -> Figure:
    """The paper's Fig. 1b form: one row per ``(image, result, label)``, columns input, X0, X1, X2."""
    _check_cmap(cmap)
    if not rows:
        raise ValueError("a figure needs at least one image")
    scales = max(len(result.maps) for _, result, _ in rows)
    columns = 1 + scales
    figure, axes = new_figure(len(rows), columns, figsize=(1.9 * columns + 0.9, 1.95 * len(rows) + 0.5),
                              squeeze=False)
    first = rows[0][1]
    kind = {"key": "keys K", "value": "values V", "attention": "attention"}.get(first.kind, first.kind)
    figure.suptitle(f"{first.method} on {kind} · MSCSA block {first.block}, CSA layer {first.layer}", fontsize=10)
    for row, (image, result, label) in enumerate(rows):
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(label, fontsize=7)
        for column in range(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                continue
            if column - 1 < len(result.maps):
                axis.imshow(overlay(image, result.maps[column - 1], cmap, alpha))
            else:
                axis.axis("off")
        if row == 0:
            axes[0, 0].set_title("input", fontsize=9)
            names = result.scale_names or [f"X{i}" for i in range(scales)]
            for column, name in enumerate(names, start=1):
                axes[0, column].set_title(name, fontsize=9)
    mappable = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    figure.colorbar(mappable, ax=axes[:, 1:].ravel().tolist(), fraction=0.03, pad=0.02, label="relative saliency")
    return figure


def faithfulness_chart(report) -> Figure:
    """Deletion and insertion curves side by side (a ``FaithfulnessReport``); the random and centre
    references dashed, each map's area in the legend."""
    figure, axes = new_figure(1, 2, figsize=(9.5, 3.4))
    colours = matplotlib.colormaps["viridis"]
    names = list(report.deletion)
    for axis, curve, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        curves, areas = getattr(report, f"{curve}_curves"), getattr(report, curve)
        for index, name in enumerate(names):
            reference = name in ("random", "centre")
            axis.plot(report.fractions, curves[name], linestyle="--" if reference else "-",
                      color="0.45" if name == "random" else ("0.7" if reference else colours(index / max(1, len(names)))),
                      label=f"{name} ({areas[name]:.3f})")
        axis.set_xlabel(f"share of the picture {'removed' if curve == 'deletion' else 'revealed'}, most salient first")
        axis.set_ylabel(f"p({report.target_label})" if report.target is not None else report.target_label)
        axis.set_title(f"{curve}: area under the curve, {better} is better", fontsize=9)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
