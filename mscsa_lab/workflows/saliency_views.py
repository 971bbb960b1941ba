"""The pictures the Saliency page shows around the maps.

- the *input view*: the model's input frame drawn large from the original picture (sharp, not the
  96-224 px input blown up), letterbox padding striped so that it reads as "not the picture"; it is
  what the page offers for clicks, so a click maps to the model's input by a plain scale
  (``geometry.map_click`` with ``shown="input"``);
- markers on it: the query cell that was clicked, or a cross where a click missed the picture;
- maps redrawn over the original picture at a fixed panel size (``geometry.map_on_original``): smooth
  bilinear maps on a sharp picture, padding left out;
- the faithfulness summary as text and a small chart.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mscsa_lab.explain.geometry import cell_centre_on_shown, map_on_original
from mscsa_lab.explain.methods import SaliencyResult

__all__ = ["VIEW_SIDE", "PANEL_SIDE", "HEAD_SIDE", "view_size", "input_view", "mark_cell", "mark_miss", "on_picture",
           "KIND_PREFIX", "faithfulness_markdown", "chart_report"]

VIEW_SIDE = 768  # the input view's longer side: larger than the page's box, which shows it shrunk to fit
PANEL_SIDE = 384  # the longer side of each map panel of the grid figure
HEAD_SIDE = 160  # ... and of the per-head figure (heads x scales panels: kept small, it is drawn often)
PAD_STRIPES = ((124, 116, 104), (92, 86, 78))  # ImageNet's mean colour (what the model sees) and a darker one
KIND_PREFIX = {"key": "K", "value": "V", "attention": "attention"}


def view_size(input_size: Sequence[int], side: int = VIEW_SIDE) -> tuple[int, int]:
    """(width, height) of the input view for a model input of ``input_size`` (height, width)."""
    height, width = int(input_size[0]), int(input_size[1])
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def input_view(prepared, picture: Image.Image, side: int = VIEW_SIDE) -> np.ndarray:
    """The model's input frame (``prepared``: ``io.images.PreparedImage``) at ``view_size``, filled
    from the original ``picture`` where the prepared input holds it, striped where it is padding."""
    in_h, in_w = prepared.display.shape[:2]
    width, height = view_size((in_h, in_w), side)
    kx, ky = width / in_w, height / in_h
    sx, sy, ox, oy = prepared.placement
    scaled = picture.resize((max(1, round(picture.width * sx * kx)), max(1, round(picture.height * sy * ky))),
                            Image.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (width, height), PAD_STRIPES[0])
    canvas.paste(scaled, (round(ox * kx), round(oy * ky)))
    view = np.asarray(canvas, dtype=np.uint8).copy()
    x0, y0, x1, y1 = prepared.content_box
    rows, cols = np.mgrid[0:height, 0:width]
    padding = (cols < round(x0 * kx)) | (cols >= round(x1 * kx)) | (rows < round(y0 * ky)) | (rows >= round(y1 * ky))
    stripes = ((rows + cols) // 12) % 2 == 1
    view[padding] = PAD_STRIPES[0]
    view[padding & stripes] = PAD_STRIPES[1]
    return view


def mark_cell(view: np.ndarray, prepared, cell: tuple[int, int], grid_size: tuple[int, int]) -> np.ndarray:
    """The view with the query cell outlined and a dot at its centre (cyan on a dark rim)."""
    image = Image.fromarray(view)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    row, col = cell
    grid_h, grid_w = grid_size
    box = (col * width / grid_w, row * height / grid_h, (col + 1) * width / grid_w - 1, (row + 1) * height / grid_h - 1)
    draw.rectangle(box, outline=(0, 0, 0), width=5)
    draw.rectangle(box, outline=(0, 255, 255), width=3)
    x, y = cell_centre_on_shown(prepared, cell, grid_size, shown="input", shown_size=(width, height))
    radius = max(5, min(width, height) // 60)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(0, 255, 255), outline=(0, 0, 0), width=2)
    return np.asarray(image).copy()


def mark_miss(view: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """The view with a red cross where a click fell outside the picture."""
    image = Image.fromarray(view)
    draw = ImageDraw.Draw(image)
    x, y = point
    size = max(8, min(image.size) // 40)
    for colour, width in (((255, 255, 255), 7), ((230, 30, 30), 4)):
        draw.line((x - size, y - size, x + size, y + size), fill=colour, width=width)
        draw.line((x - size, y + size, x + size, y - size), fill=colour, width=width)
    return np.asarray(image).copy()


def on_picture(prepared, picture: Image.Image, results: Sequence[SaliencyResult], side: int = PANEL_SIDE,
               cell: tuple[int, int] | None = None,
               heads: bool = False) -> tuple[np.ndarray, list[SaliencyResult], tuple | None]:
    """(the original picture at ``side`` pixels on its longer side, the results with their maps (and,
    with ``heads``, their per-head maps; else none) redrawn over it, where the query cell's centre
    falls on it). The padding is left out; parts cropped away (``fit="crop"``) stay uncoloured."""
    width, height = prepared.original_size
    factor = side / max(width, height)
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    sx, sy, ox, oy = prepared.placement
    # The same placement seen from the resized picture: its pixel (x, y) is the original's (x w/W, y h/H).
    resized = replace(prepared, original_size=(new_w, new_h),
                      placement=(sx * width / new_w, sy * height / new_h, ox, oy))
    redraw = lambda values: map_on_original(resized, values, max_side=None)  # noqa: E731 - one pass for a stack
    drawn = []
    for result in results:
        per_head = (None if result.head_maps is None or not heads else
                    list(redraw(np.stack([np.asarray(scale) for scale in result.head_maps]))))
        drawn.append(replace(result, maps=list(redraw(np.stack(result.maps))), head_maps=per_head))
    small = np.asarray(picture.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0), dtype=np.uint8)
    marker = None
    if cell is not None:
        marker = cell_centre_on_shown(resized, cell, tuple(results[0].grid_maps[0].shape), shown="original")
    return small, drawn, marker


def faithfulness_markdown(report, kinds: Sequence[str], target_label: str) -> str:
    """The deletion/insertion areas per map as a Markdown table, the baselines beside, and what they mean."""
    beats_random, beats_centre = report.beats("random"), report.beats("centre")
    rows = ["| map | deletion (lower is better) | insertion (higher is better) | beats random | beats centre |",
            "|---|---|---|---|---|"]
    for name in report.deletion:
        if name in ("random", "centre"):
            continue
        rows.append(f"| {name} | {report.deletion[name]:.3f} | {report.insertion[name]:.3f} | "
                    f"{'yes' if beats_random[name] else 'no'} | {'yes' if beats_centre[name] else 'no'} |")
    for name in ("random", "centre"):
        rows.append(f"| *{name} map (baseline)* | {report.deletion[name]:.3f} | {report.insertion[name]:.3f} | | |")
    good = [name for name in beats_random if beats_random[name] and beats_centre[name]]
    verdict = (f"{len(good)} of {len(beats_random)} maps beat both baselines"
               + (f" ({', '.join(good)})." if good else ": these maps say no more than chance or the centre does."))
    return (f"**Faithfulness** for p({target_label}), {len(report.fractions) - 1} steps. Deletion removes the most "
            "salient pixels first (a faithful map makes the probability fall fast: lower area); insertion reveals them "
            "over a blurred copy (it should rise fast: higher area). " + verdict + "\n\n" + "\n".join(rows))


def chart_report(report, kinds: Sequence[str]):
    """The report cut to what a small chart can show: each kind's combined map and the two baselines."""
    keep = [f"{KIND_PREFIX.get(kind, kind)} combined" for kind in kinds] + ["random", "centre"]
    keep = [name for name in keep if name in report.deletion]
    pick = lambda values: {name: values[name] for name in keep}  # noqa: E731
    return replace(report, deletion=pick(report.deletion), insertion=pick(report.insertion),
                   deletion_curves=pick(report.deletion_curves), insertion_curves=pick(report.insertion_curves))


# ---------------------------------------------------------------------------------------- composed pictures
# The page's grid and per-head pictures are composed as images (overlays pasted on one canvas, labels drawn
# with the font matplotlib ships) rather than drawn as matplotlib figures: the same content in a tenth of
# the time, which is most of what a render used to cost. Files for papers come from ``explain.render``.
_LABEL_SIZE = 15
_GAP = 8
_HEADER = 44


def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int = _LABEL_SIZE) -> None:
    draw.multiline_text(xy, text, fill=(20, 20, 20), font=_font(size), spacing=2)


def compose_grid(image: np.ndarray, results: Sequence[SaliencyResult], cmap: str = "inferno",
                 class_names: Sequence[str] | None = None, marker: tuple[float, float] | None = None) -> np.ndarray:
    """picture | scale X0 | X1 | X2, one row per result (keys, values), each map over the picture and
    scaled to its own range (a colour bar says which way), the query point marked on every map."""
    from mscsa_lab.explain.render import _check_cmap, _row_label, overlay

    _check_cmap(cmap)
    height, width = image.shape[:2]
    columns = 1 + max(len(r.maps) for r in results)
    canvas = Image.new("RGB", (columns * (width + _GAP) + 70, len(results) * (height + _HEADER + _GAP) + 40),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    _label(draw, (_GAP, 8), f"MSCSA block {results[0].block}, CSA layer {results[0].layer}", 17)
    for row, result in enumerate(results):
        top = 40 + row * (height + _HEADER + _GAP)
        _label(draw, (_GAP, top), _row_label(result, class_names))
        canvas.paste(Image.fromarray(image), (_GAP, top + _HEADER))
        names = result.scale_names or [f"X{i}" for i in range(len(result.maps))]
        for index, values in enumerate(result.maps):
            left = (index + 1) * (width + _GAP) + _GAP
            _label(draw, (left, top + _HEADER // 2), f"scale {names[index]}")
            canvas.paste(Image.fromarray(overlay(image, values, cmap)), (left, top + _HEADER))
            if marker is not None:
                x, y = left + marker[0], top + _HEADER + marker[1]
                draw.line((x - 9, y - 9, x + 9, y + 9), fill=(0, 255, 255), width=3)
                draw.line((x - 9, y + 9, x + 9, y - 9), fill=(0, 255, 255), width=3)
        bar_left = columns * (width + _GAP) + _GAP
        ramp = np.linspace(1, 0, height)[:, None].repeat(14, axis=1)
        colours = (matplotlib_colormap(cmap)(ramp)[..., :3] * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(colours), (bar_left, top + _HEADER))
        _label(draw, (bar_left + 18, top + _HEADER), "high", 12)
        _label(draw, (bar_left + 18, top + _HEADER + height - 14), "low", 12)
    return np.asarray(canvas)


def compose_heads(image: np.ndarray, result: SaliencyResult, cmap: str = "inferno") -> np.ndarray:
    """One row per head, one column per scale: each head's map over the (small) picture."""
    from mscsa_lab.explain.render import overlay

    heads, scales = result.head_maps[0].shape[0], len(result.head_maps)
    height, width = image.shape[:2]
    label_width = 70
    canvas = Image.new("RGB", (label_width + scales * (width + 4), 26 + heads * (height + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    names = result.scale_names or [f"X{i}" for i in range(scales)]
    for scale in range(scales):
        _label(draw, (label_width + scale * (width + 4), 4), names[scale], 13)
        for head in range(heads):
            canvas.paste(Image.fromarray(overlay(image, result.head_maps[scale][head], cmap)),
                         (label_width + scale * (width + 4), 26 + head * (height + 4)))
    for head in range(heads):
        _label(draw, (4, 26 + head * (height + 4) + height // 2 - 8), f"head {head}", 13)
    return np.asarray(canvas)


def matplotlib_colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]
