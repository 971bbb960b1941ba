"""Where the token grids lie on the image, and where a click lands on them.

Each key/value scale is an ``h x w`` grid of tokens over the ``H x W`` model input. Two layouts:

- *tiled* (how the maps were always drawn): cell ``(r, c)`` covers ``[c W/w, (c+1) W/w) x
  [r H/h, (r+1) H/h)``, centre ``((c + 0.5) W/w, (r + 0.5) H/h)``; bilinear upsampling with
  ``align_corners=False`` puts each value there;
- *aligned* (where the convolution takes each token from): a scale made by a stride-``s``
  3x3 convolution with padding 1 (or the cascade's two stride-2 ones, ``s = 4``) centres its token
  ``j`` on X0's token ``s j``, i.e. at ``(s j + 0.5)`` X0 cells, up to a whole X0 cell left of and
  above the tiled centre. Scoring and drawing with this layout puts a coarse token where its
  evidence came from.

A letterboxed input has a *valid box*, the picture inside the padding: a cell counts only when at
least half of its span lies inside (at least one cell always does), and upsampled maps are NaN
outside the box, so neither drawing nor scoring sees the padding.

Clicks: the page shows the original picture (or the prepared input) at some size; ``map_click``
turns a point on what was shown into a point of the model's input and a cell of the query grid,
or says why the point is outside what the model sees (the padding, or a part cropped away).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Box", "SCALE_STRIDES", "ScaleGeometry", "cell_centres", "valid_cells", "upsample_grid", "map_click",
           "cell_centre_on_shown", "Click", "original_to_input", "input_to_original", "input_to_cell", "map_on_original"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), in input pixels
# Per downsampling strategy (Table 5): the stride of each scale's tokens on X0's grid.
SCALE_STRIDES = {"dwconv": (1, 2, 3), "avgpool": (1, 2, 3), "single": (1, 2), "cascade": (1, 2, 4)}


@dataclass(frozen=True)
class ScaleGeometry:
    """One scale's grid on the input; ``base_size`` (X0's grid) and ``stride`` give the aligned
    layout, ``base_size=None`` the tiled one."""

    grid_size: tuple[int, int]
    input_size: tuple[int, int]
    base_size: tuple[int, int] | None = None
    stride: int = 1

    def _axis(self, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centres, span starts, span ends) in pixels along rows (0) or columns (1)."""
        count, extent = self.grid_size[axis], self.input_size[axis]
        index = np.arange(count, dtype=np.float64)
        if self.base_size is None:
            pitch = extent / count
            return (index + 0.5) * pitch, index * pitch, (index + 1) * pitch
        pitch = extent / self.base_size[axis]
        centres = (self.stride * index + 0.5) * pitch
        half = self.stride * pitch / 2
        return centres, centres - half, centres + half

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) pixel centres of every cell, each an h x w array."""
        return np.meshgrid(self._axis(0)[0], self._axis(1)[0], indexing="ij")

    def valid(self, box: Box | None) -> np.ndarray:
        """Boolean h x w: cells at least half inside ``box`` (all cells without a box; never none)."""
        if box is None:
            return np.ones(self.grid_size, dtype=bool)
        x0, y0, x1, y1 = box

        def overlap(axis: int, low: float, high: float) -> np.ndarray:
            _, start, end = self._axis(axis)
            return np.clip(np.minimum(end, high) - np.maximum(start, low), 0, None) / (end - start)

        fraction = overlap(0, y0, y1)[:, None] * overlap(1, x0, x1)[None, :]
        valid = fraction >= 0.5 - 1e-9
        return valid if valid.any() else fraction >= fraction.max()

    def _resample(self, flat: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if self.base_size is None:
            return F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        coordinates = []
        for axis in (1, 0):  # grid_sample wants (x, y)
            count = self.grid_size[axis]
            pixels = torch.arange(size[axis], dtype=torch.float64) + 0.5
            index = (pixels * self.base_size[axis] / size[axis] - 0.5) / self.stride
            coordinates.append(index * 2 / (count - 1) - 1 if count > 1 else torch.zeros_like(index))
        grid_y, grid_x = torch.meshgrid(coordinates[1], coordinates[0], indexing="ij")
        sampling = torch.stack([grid_x, grid_y], dim=-1).float()[None].expand(flat.shape[0], -1, -1, -1)
        return F.grid_sample(flat, sampling, mode="bilinear", padding_mode="border", align_corners=True)

    def upsample(self, grid: torch.Tensor, valid: np.ndarray | None = None, box: Box | None = None) -> np.ndarray:
        """(..., h, w) -> (..., H, W) float32, bilinear in this layout. With ``valid`` cells, padding
        cells do not bleed into the picture (normalised interpolation of the valid cells only);
        with ``box``, pixels outside it are NaN."""
        shape = grid.shape
        flat = grid.detach().reshape(-1, 1, shape[-2], shape[-1]).float()
        up = self._resample(flat)
        if valid is not None and not valid.all():
            mask = torch.from_numpy(valid.astype(np.float32))[None, None]
            weight = self._resample(mask)
            masked = self._resample(flat * mask)
            up = torch.where(weight > 1e-6, masked / weight.clamp(min=1e-6), up)
        result = up.reshape(*shape[:-2], *self.input_size).cpu().numpy().astype(np.float32)
        if box is not None:
            x0, y0, x1, y1 = box
            outside = np.ones(self.input_size, dtype=bool)
            outside[y0:y1, x0:x1] = False
            result[..., outside] = np.nan
        return result


def cell_centres(grid_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel centres of every cell in the tiled layout, each an h x w array."""
    return ScaleGeometry(tuple(grid_size), tuple(input_size)).centres()


def valid_cells(grid_size: tuple[int, int], input_size: tuple[int, int], box: Box | None) -> np.ndarray:
    """Tiled layout: cells at least half inside ``box``."""
    return ScaleGeometry(tuple(grid_size), tuple(input_size)).valid(box)


def upsample_grid(grid: torch.Tensor, size: tuple[int, int], valid: np.ndarray | None = None,
                  box: Box | None = None) -> np.ndarray:
    """Tiled layout upsampling (see :meth:`ScaleGeometry.upsample`)."""
    return ScaleGeometry(tuple(grid.shape[-2:]), tuple(size)).upsample(grid, valid, box)


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


def map_on_original(prepared, values: np.ndarray, max_side: int | None = 1024) -> np.ndarray:
    """A full-size map (input H x W) redrawn over the original picture, for a large preview:
    bilinear, NaN where the model saw nothing of it (parts cropped away) or where the map is NaN.
    The result is the original's size, shrunk to ``max_side`` on its longer side if larger (draw the
    picture at the same size). ``values`` may hold several maps (``... x H x W``): one pass redraws them all."""
    width, height = prepared.original_size
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    xs = (np.arange(out_w) + 0.5) / scale
    ys = (np.arange(out_h) + 0.5) / scale
    sx, sy, ox, oy = prepared.placement
    in_h, in_w = values.shape[-2:]
    grid_x = torch.from_numpy((xs * sx + ox) / in_w * 2 - 1)  # align_corners=False: -1 and 1 are the outer edges
    grid_y = torch.from_numpy((ys * sy + oy) / in_h * 2 - 1)
    mesh_y, mesh_x = torch.meshgrid(grid_y, grid_x, indexing="ij")
    values = np.asarray(values, dtype=np.float32)
    leading = values.shape[:-2]
    count = int(np.prod(leading)) if leading else 1
    sampling = torch.stack([mesh_x, mesh_y], dim=-1).float()[None].expand(count, -1, -1, -1)
    source = torch.from_numpy(values.reshape(count, 1, in_h, in_w))
    finite = torch.isfinite(source)
    filled = torch.where(finite, source, torch.zeros_like(source))
    # "border": beyond the input's outer edge the edge pixel continues (zeros would leave the picture's
    # corners NaN when it is drawn larger than the input)
    drawn = F.grid_sample(filled, sampling, mode="bilinear", padding_mode="border", align_corners=False)
    weight = F.grid_sample(finite.float(), sampling, mode="bilinear", padding_mode="border", align_corners=False)
    result = torch.where(weight > 0.5, drawn / weight.clamp(min=1e-6), torch.full_like(drawn, float("nan")))
    x0, y0, x1, y1 = prepared.content_box
    in_x = (xs * sx + ox)[None, :]
    in_y = (ys * sy + oy)[:, None]
    seen = (in_x >= x0) & (in_x < x1) & (in_y >= y0) & (in_y < y1)
    drawn_maps = np.where(seen, result[:, 0].numpy(), np.nan).astype(np.float32)
    return drawn_maps.reshape(*leading, out_h, out_w) if leading else drawn_maps[0]
