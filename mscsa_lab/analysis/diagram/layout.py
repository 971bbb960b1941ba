"""The diagram's layout engine: boxes of text measured before anything is placed, columns, titled groups
and arrows, so no text leaves its box or the figure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

FONT_FAMILY = "DejaVu Sans"  # matplotlib ships it, so measuring and drawing use the same glyphs
TITLE_SIZE = 12.0
SUBTITLE_SIZE = 8.5
GROUP_SIZE = 9.0
BOX_TITLE_SIZE = 8.5
BODY_SIZE = 8.0
LINE_SPACING = 1.32
PAD_X, PAD_Y = 0.10, 0.07  # inches inside a box
CHILD_GAP = 0.06
COLUMN_GAP = 0.42  # between columns, room for an arrow
GROUP_GAP = 0.36
FRAME_PAD = 0.12
ROW_GAP = 0.24
MARGIN = 0.15
SKIP_BAND = 0.42

STAGE_COLOURS = ("#dbe9f6", "#dcefd9", "#fbe5cf", "#eadcf2")
NEUTRAL = "#eeeeee"
MSCSA_COLOUR = "#f6f1dc"
CSA_COLOUR = "#fde0c5"
FFN_COLOUR = "#d8efe6"
HEAD_COLOUR = "#f4d8dc"
EDGE = "#555555"


def font(size: float, bold: bool = False) -> FontProperties:
    return FontProperties(family=FONT_FAMILY, size=size, weight="bold" if bold else "normal")


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in inches, with a margin for renderer hinting and for SVG viewers' own fonts."""
    width, _, _ = text_to_path.get_text_width_height_descent(text, font(size, bold), ismath=False)
    return (width * 1.06 + 2.0) / 72.0


def line_height(size: float) -> float:
    return size * LINE_SPACING / 72.0


@dataclass
class Box:
    """A rounded box of text lines, optionally holding child boxes stacked under its lines."""

    key: str
    lines: list[tuple[str, bool]]  # (text, bold)
    fill: str
    align: str = "center"
    children: list["Box"] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    left: float = 0.0
    top: float = 0.0  # distance from the figure's top edge

    def measure(self) -> None:
        for child in self.children:
            child.measure()
        widest_line = max((text_width(t, BOX_TITLE_SIZE if b else BODY_SIZE, b) for t, b in self.lines), default=0)
        child_width = max((c.width for c in self.children), default=0.0)
        self.width = max(widest_line, child_width) + 2 * PAD_X
        self.height = 2 * PAD_Y + self._text_height()
        if self.children:
            self.height += sum(c.height for c in self.children) + CHILD_GAP * len(self.children)

    def _text_height(self) -> float:
        return sum(line_height(BOX_TITLE_SIZE if b else BODY_SIZE) for _, b in self.lines)

    def set_width(self, width: float) -> None:
        self.width = max(self.width, width)
        for child in self.children:
            child.set_width(self.width - 2 * PAD_X)

    def place(self, left: float, top: float) -> None:
        self.left, self.top = left, top
        cursor = top + PAD_Y + self._text_height() + CHILD_GAP
        for child in self.children:
            child.place(left + PAD_X, cursor)
            cursor += child.height + CHILD_GAP

    @property
    def middle(self) -> float:
        return self.top + self.height / 2

    def draw(self, axes: Any, figure_height: float, gid: str | None = None) -> None:
        gid = gid or f"box-{self.key}"
        axes.add_patch(FancyBboxPatch(
            (self.left, figure_height - self.top - self.height), self.width, self.height,
            boxstyle="round,pad=0,rounding_size=0.05", facecolor=self.fill, edgecolor=EDGE, linewidth=0.8,
            zorder=2, gid=gid,
        ))
        cursor = self.top + PAD_Y
        for index, (text, bold) in enumerate(self.lines):
            size = BOX_TITLE_SIZE if bold else BODY_SIZE
            x = self.left + PAD_X if self.align == "left" else self.left + self.width / 2
            axes.text(x, figure_height - cursor, text, ha=self.align, va="top", fontproperties=font(size, bold),
                      zorder=4, gid=f"{gid}-text-{index}", parse_math=False)
            cursor += line_height(size)
        for child in self.children:
            child.draw(axes, figure_height, f"{gid}-{child.key}")


@dataclass
class Column:
    """Boxes placed one above the other: a grid column has one slot per stage row (None = empty);
    a single column holds one box, centred on the content or on one stage row (``anchor_row``)."""

    boxes: list[Box | None]
    grid: bool = False
    anchor_row: int | None = None

    @property
    def width(self) -> float:
        return max((b.width for b in self.boxes if b is not None), default=0.0)


@dataclass
class Group:
    """A titled panel of columns (input, backbone, aggregation, MSCSA blocks, output)."""

    key: str
    title: str
    columns: list[Column]
    left: float = 0.0
    width: float = 0.0


@dataclass
class Arrow:
    start: tuple[Box, str]  # (box, side): side "right", "left", "top", "bottom"
    end: tuple[Box, str]
    label: str = ""


def anchor(box: Box, side: str) -> tuple[float, float]:
    """A point on a box's side, (x, distance from the top)."""
    if side == "right":
        return box.left + box.width, box.middle
    if side == "left":
        return box.left, box.middle
    if side == "top":
        return box.left + box.width / 2, box.top
    return box.left + box.width / 2, box.top + box.height


def layout(groups: list[Group], header_width: float, header_height: float, skip: bool) -> tuple[float, float]:
    """Place every box; return the figure's (width, height) in inches."""
    for group in groups:
        for column in group.columns:
            for box in column.boxes:
                if box is not None:
                    box.measure()
            for box in column.boxes:  # one width per column: the boxes line up
                if box is not None:
                    box.set_width(column.width)

    grid_columns = [c for g in groups for c in g.columns if c.grid]
    rows = len(grid_columns[0].boxes) if grid_columns else 0
    row_heights = [max((c.boxes[r].height for c in grid_columns if c.boxes[r] is not None), default=0.0)
                   for r in range(rows)]
    grid_height = sum(row_heights) + ROW_GAP * max(rows - 1, 0)
    single_heights = [c.boxes[0].height for g in groups for c in g.columns if not c.grid and c.boxes[0] is not None]
    content_height = max([grid_height, *single_heights])

    group_title_height = line_height(GROUP_SIZE) + 0.06
    frame_top = MARGIN + header_height
    content_top = frame_top + FRAME_PAD + group_title_height
    grid_top = content_top + (content_height - grid_height) / 2
    row_middles, cursor = [], grid_top
    for height in row_heights:
        row_middles.append(cursor + height / 2)
        cursor += height + ROW_GAP

    x = MARGIN
    for group in groups:
        content_width = sum(c.width for c in group.columns) + COLUMN_GAP * (len(group.columns) - 1)
        title_width = text_width(group.title, GROUP_SIZE, True)
        group.left, group.width = x, max(content_width, title_width) + 2 * FRAME_PAD
        column_left = x + (group.width - content_width) / 2
        for column in group.columns:
            for row, box in enumerate(column.boxes):
                if box is None:
                    continue
                if column.grid:
                    middle = row_middles[row]
                elif column.anchor_row is not None and row_middles:
                    middle = row_middles[column.anchor_row]
                else:
                    middle = content_top + content_height / 2
                box.place(column_left + (column.width - box.width) / 2, middle - box.height / 2)
            column_left += column.width + COLUMN_GAP
        x += group.width + GROUP_GAP
    width = max(x - GROUP_GAP + MARGIN, header_width + 2 * MARGIN)
    height = content_top + content_height + FRAME_PAD + MARGIN + (SKIP_BAND if skip else 0.0)
    return width, height
