"""Where the token grids lie on the image, and where a click lands on them.

Every key/value scale is an ``h x w`` grid of tokens laid over the ``H x W`` model input the way
the maps are drawn: cell ``(r, c)`` covers ``[c W/w, (c+1) W/w) x [r H/h, (r+1) H/h)`` and its
centre is ``((c + 0.5) W/w, (r + 0.5) H/h)`` (bilinear upsampling with ``align_corners=False``
puts the cell's value there). A letterboxed input has a *valid box*, the picture inside the
padding: a cell counts only when at least half of it lies inside (at least one cell always does),
and upsampled maps are NaN outside the box, so neither drawing nor scoring sees the padding.

Clicks: the page shows the original picture (or the prepared input) at some size; ``map_click``
turns a point on what was shown into a point of the model's input and a cell of the query grid,
or says why the point is outside what the model sees (the padding, or a part cropped away).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Box", "cell_centres", "valid_cells", "upsample_grid", "map_click", "cell_centre_on_shown", "Click",
           "original_to_input", "input_to_original", "input_to_cell"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), in input pixels


def cell_centres(grid_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel centres of every cell, each an h x w array."""
    (h, w), (height, width) = grid_size, input_size
    ys = (np.arange(h) + 0.5) * height / h
    xs = (np.arange(w) + 0.5) * width / w
    return np.meshgrid(ys, xs, indexing="ij")


def valid_cells(grid_size: tuple[int, int], input_size: tuple[int, int], box: Box | None) -> np.ndarray:
    """Boolean h x w: cells at least half inside ``box`` (all cells without a box; never none)."""
    h, w = grid_size
    if box is None:
        return np.ones((h, w), dtype=bool)
    height, width = input_size
    x0, y0, x1, y1 = box

    def overlap(count: int, extent: int, low: int, high: int) -> np.ndarray:
        edges = np.arange(count + 1) * extent / count
        return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None) / (extent / count)

    fraction = overlap(h, height, y0, y1)[:, None] * overlap(w, width, x0, x1)[None, :]
    valid = fraction >= 0.5 - 1e-9
    if not valid.any():
        valid = fraction >= fraction.max()
    return valid


def upsample_grid(grid: torch.Tensor, size: tuple[int, int], valid: np.ndarray | None = None,
                  box: Box | None = None) -> np.ndarray:
    """(..., h, w) -> (..., H, W) float32, bilinear. With ``valid`` cells, padding cells do not
    bleed into the picture (normalised interpolation of the valid cells only); with ``box``,
    pixels outside it are NaN."""
    shape = grid.shape
    flat = grid.detach().reshape(-1, 1, shape[-2], shape[-1]).float()
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    if valid is not None and not valid.all():
        mask = torch.from_numpy(valid.astype(np.float32))[None, None]
        weight = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
        masked = F.interpolate(flat * mask, size=size, mode="bilinear", align_corners=False)
        up = torch.where(weight > 1e-6, masked / weight.clamp(min=1e-6), up)
    result = up.reshape(*shape[:-2], *size).cpu().numpy().astype(np.float32)
    if box is not None:
        x0, y0, x1, y1 = box
        outside = np.ones(size, dtype=bool)
        outside[y0:y1, x0:x1] = False
        result[..., outside] = np.nan
    return result


# ------------------------------------------------------------------------------------- clicks
def original_to_input(prepared, x: float, y: float) -> tuple[float, float]:
    """A point of the original picture (as loaded, EXIF applied) on the model's input."""
    sx, sy, ox, oy = prepared.placement
    return x * sx + ox, y * sy + oy


def input_to_original(prepared, x: float, y: float) -> tuple[float, float]:
    sx, sy, ox, oy = prepared.placement
    return (x - ox) / sx, (y - oy) / sy


def input_to_cell(x: float, y: float, input_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the grid cell under an input pixel (clamped to the grid)."""
    (height, width), (h, w) = input_size, grid_size
    return min(h - 1, max(0, int(y * h / height))), min(w - 1, max(0, int(x * w / width)))


@dataclass(frozen=True)
class Click:
    """``input_xy``: the point on the model's input; ``cell``: (row, col) on the query grid, None
    when the point is outside what the model sees; ``message``: why, for the page to show."""

    input_xy: tuple[float, float]
    cell: tuple[int, int] | None
    message: str = ""

    @property
    def inside(self) -> bool:
        return self.cell is not None


def map_click(prepared, x: float, y: float, grid_size: tuple[int, int], shown: str = "original",
              shown_size: tuple[int, int] | None = None) -> Click:
    """Map a click at ``(x, y)`` on the picture the page showed to the query grid.

    ``shown``: "original" (the uploaded picture) or "input" (the prepared, letterboxed model input);
    ``shown_size``: (width, height) it was drawn at, when that differs from its own pixel size."""
    if shown not in ("original", "input"):
        raise ValueError(f"shown={shown!r}: the click is on the 'original' picture or the prepared 'input'")
    height, width = prepared.display.shape[:2]
    own = prepared.original_size if shown == "original" else (width, height)
    if shown_size is not None:
        x, y = x * own[0] / shown_size[0], y * own[1] / shown_size[1]
    if not (0 <= x < own[0] and 0 <= y < own[1]):
        return Click((float(x), float(y)), None, f"the click at ({x:.0f}, {y:.0f}) is outside the picture "
                                                  f"({own[0]}x{own[1]}): click on the image")
    in_x, in_y = original_to_input(prepared, x, y) if shown == "original" else (x, y)
    x0, y0, x1, y1 = prepared.content_box
    if not (x0 <= in_x < x1 and y0 <= in_y < y1):
        where = "on the padding around the picture" if shown == "input" else "on a part cropped away (fit='crop')"
        return Click((in_x, in_y), None, f"the click falls {where}, which the model does not see: "
                                         "click on the picture itself")
    return Click((in_x, in_y), input_to_cell(in_x, in_y, (height, width), grid_size))


def cell_centre_on_shown(prepared, cell: tuple[int, int], grid_size: tuple[int, int], shown: str = "original",
                         shown_size: tuple[int, int] | None = None) -> tuple[float, float]:
    """Where to draw the marker of a query cell on the picture the page shows."""
    height, width = prepared.display.shape[:2]
    x = (cell[1] + 0.5) * width / grid_size[1]
    y = (cell[0] + 0.5) * height / grid_size[0]
    own = (width, height)
    if shown == "original":
        x, y = input_to_original(prepared, x, y)
        own = prepared.original_size
    if shown_size is not None:
        x, y = x * shown_size[0] / own[0], y * shown_size[1] / own[1]
    return x, y
