"""A block diagram of a built MSCSA model, drawn from the model itself (the Build tab's picture).

Every number is read from the built model and one observed forward pass (``diagram.facts``), never
from the settings alone, so the picture is what runs. The layout engine is ``diagram.layout``.

What is drawn, left to right:

- the input (channels, HxW);
- the backbone's four stages (stride, channels, map size at this input), in flow order;
- the multi-stage aggregation: per stage how its map reaches the common grid (average pooling,
  kept as is, or upsampled) and the optional squeeze conv (Ci -> Ci'), then the channel concat;
- the MSCSA blocks: per block its two CSA layers (heads, key/value dims, query tokens, each key/value
  scale as grid = tokens, PCP and down-sampling), the Intra-FFN (or the FFN that replaces it) and the
  FFN with their widths; runs of identical blocks are drawn once when there are more than
  ``MAX_BLOCKS_DRAWN``;
- the output: the classification head (Fig. 4), the dense fusion into the backbone maps (Fig. 5),
  or TopFormer's injection and segmentation head (the paper's Table 3 model).

The figure is sized from its content (text is measured before anything is placed), so no text leaves
its box or the figure; ``save_diagram`` writes SVG (text kept as text, searchable) or PNG.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

from mscsa_lab.analysis.diagram.facts import AttentionFacts, BlockFacts, DiagramFacts, FFNFacts, diagram_facts
from mscsa_lab.analysis.diagram.layout import (
    BODY_SIZE, CSA_COLOUR, EDGE, FFN_COLOUR, FRAME_PAD, GROUP_SIZE, HEAD_COLOUR, MARGIN, MSCSA_COLOUR, NEUTRAL,
    SKIP_BAND, STAGE_COLOURS, SUBTITLE_SIZE, TITLE_SIZE, Arrow, Box, Column, Group, anchor, font, layout,
    line_height, text_width)
from mscsa_lab.analysis.observe import ModelObservation
from mscsa_lab.io.export import ExportError

__all__ = ["model_diagram", "save_diagram", "diagram_svg", "figure_svg", "DIAGRAM_FORMATS", "MAX_BLOCKS_DRAWN"]

DIAGRAM_FORMATS = (".svg", ".png")
# Up to this depth every block gets its own box (a reader counts them); deeper models draw each
# run of identical blocks once, so a depth-24 model stays readable.
MAX_BLOCKS_DRAWN = 4


# =========================================================================== text of the boxes
def _size(grid: Sequence[int]) -> str:
    return f"{grid[0]}x{grid[1]}"


def _count(value: int) -> str:
    if value >= 100_000:
        return f"{value / 1e6:.2f} M"
    if value >= 1_000:
        return f"{value / 1e3:.1f} k"
    return str(value)


def _ratio(value: Any) -> str:
    if value is None:
        return "none"
    fraction = Fraction(float(value)).limit_denominator(16)
    return str(fraction) if abs(float(fraction) - float(value)) < 1e-9 else f"{float(value):g}"


def _headline(facts: DiagramFacts) -> tuple[str, list[str]]:
    """The title and the lines under it: what model, at what size, with which settings and parameters."""
    title = f"{facts.backbone} + MSCSA  ·  {facts.task}  ·  input {facts.in_chans}x{_size(facts.input_size)}"
    lines = []
    settings = facts.settings
    if settings:
        lines.append(
            f"MSCSA settings: pool 1/{facts.pool_stride} · squeeze {_ratio(settings.get('squeeze_ratio'))} · "
            f"depth {len(facts.blocks)} · MLP ratio {settings.get('mlp_ratio', 0):g} · "
            f"activation {settings.get('act_layer', '?')}"
        )
    parts = [f"{name} {_count(count)}" for name, count in facts.params.items() if count and name != "total"]
    if "total" in facts.params:
        parts.append(f"total {_count(facts.params['total'])}")
    lines.append("parameters: " + " · ".join(parts))
    return title, lines


def _attention_lines(number: int, attention: AttentionFacts) -> list[tuple[str, bool]]:
    lines = [
        (f"CSA {number} · {attention.num_heads} heads", True),
        (f"key dim {attention.key_dim} · value dim {attention.value_dim}", False),
        (f"Q: {_size(attention.query_grid)} = {attention.query_grid[0] * attention.query_grid[1]} tokens", False),
    ]
    for index, (grid, tokens) in enumerate(zip(attention.scale_grids, attention.scale_tokens)):
        lines.append((f"K/V X{index}: {_size(grid)} = {tokens} tokens", False))
    lines.append((f"keys per query: {sum(attention.scale_tokens)}", False))
    switches = ["PCP on" if attention.use_pcp else "PCP off"]
    switches.append(f"MSP {attention.downsample}" if attention.use_msp else "MSP off (one scale)")
    lines.append((" · ".join(switches), False))
    return lines


def _ffn_lines(ffn: FFNFacts, replaces_intra: bool) -> list[tuple[str, bool]]:
    if ffn.intra:
        lines = [("Intra-FFN (per-stage FFNs)", True)]
        parts = enumerate(zip(ffn.widths, ffn.hidden), start=1)
        lines += [(f"part {i}: {w} → {h} → {w} ch", False) for i, (w, h) in parts]
        return lines
    title = "FFN (Intra-FFN off)" if replaces_intra else "FFN"
    return [(title, True), (f"{ffn.widths[0]} → {ffn.hidden[0]} → {ffn.widths[0]} ch", False)]


# =========================================================================== building the picture
def _stage_boxes(facts: DiagramFacts) -> list[Box]:
    return [
        Box(f"stage{s.number}", [(f"Stage {s.number} · stride {s.stride}", True),
                                  (f"{s.channels} ch · {_size(s.map_size)}", False)],
             STAGE_COLOURS[(s.number - 1) % 4])
        for s in facts.stages
    ]


def _aggregation_boxes(facts: DiagramFacts) -> list[Box]:
    boxes = []
    grid = _size(facts.mscsa_grid)
    for s in facts.stages:
        resize = f"kept at {grid}" if s.resize == "as is" else f"{s.resize} {_size(s.map_size)} → {grid}"
        squeeze = (f"squeeze 1x1 conv+BN {s.channels} → {s.mscsa_channels} ch" if s.squeezed
                   else f"no squeeze · {s.mscsa_channels} ch")
        boxes.append(Box(f"pool{s.number}", [(f"F{s.number}: {resize}", True), (squeeze, False)],
                          STAGE_COLOURS[(s.number - 1) % 4]))
    return boxes


def _concat_box(facts: DiagramFacts) -> Box:
    widths = " + ".join(str(s.mscsa_channels) for s in facts.stages)
    return Box("concat", [("concat (channels)", True), (widths, False),
                           (f"= {facts.mscsa_channels} ch · {_size(facts.mscsa_grid)}", False),
                           (f"{facts.mscsa_grid[0] * facts.mscsa_grid[1]} tokens", False)], NEUTRAL)


def _block_runs(blocks: Sequence[BlockFacts]) -> list[tuple[int, int]]:
    """(first, last) block numbers (1-based) of each box to draw: every block up to
    ``MAX_BLOCKS_DRAWN``, else each run of identical consecutive blocks once."""
    if len(blocks) <= MAX_BLOCKS_DRAWN:
        return [(i + 1, i + 1) for i in range(len(blocks))]
    runs: list[tuple[int, int]] = []
    for index, block in enumerate(blocks):
        if runs and blocks[runs[-1][1] - 1] == block:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index + 1, index + 1))
    return runs


def _block_box(facts: DiagramFacts, first: int, last: int) -> Box:
    block = facts.blocks[first - 1]
    depth = len(facts.blocks)
    if first == last:
        title = f"MSCSA block {first} of {depth}"
    else:
        title = f"MSCSA blocks {first}–{last} of {depth} ({last - first + 1} identical)"
    children = [
        Box("csa1", _attention_lines(1, block.attentions[0]), CSA_COLOUR, align="left"),
        Box("mixer", _ffn_lines(block.mixer, replaces_intra=True), FFN_COLOUR, align="left"),
        Box("csa2", _attention_lines(2, block.attentions[1]), CSA_COLOUR, align="left"),
        Box("ffn", _ffn_lines(block.ffn, replaces_intra=False), FFN_COLOUR, align="left"),
    ]
    lines = [(title, True), ("each: x + sublayer(BN(x))", False)]
    return Box(f"block{first}" if first == last else f"blocks{first}to{last}", lines, MSCSA_COLOUR, children=children)


def _output_groups(facts: DiagramFacts) -> tuple[list[Group], list[Arrow], Box | None, str]:
    """The output panel(s), the arrows inside them, the box the last block feeds (or the split),
    and the label of the skip path from the backbone ('' when there is none)."""
    out = facts.output
    if out.kind == "classification":
        if out.num_classes > 0:
            lines = [("Classification head", True), ("BN → global avg pool → Linear" if out.global_pool == "avg"
                                                     else "BN → Linear per position (no pooling)", False),
                     (f"{out.head_features} → {out.num_classes} classes", False)]
        else:
            lines = [("No classifier (num_classes 0)", True), (f"pre-logits: {out.head_features} features", False)]
        kind = "logits" if out.num_classes > 0 else "features"
        lines.append((f"{kind}: {' x '.join(map(str, out.output_shapes[0]))}", False))
        head = Box("head", lines, HEAD_COLOUR)
        return [Group("output", "Classification head (Fig. 4)", [Column([head])])], [], head, ""

    split = Box("split", [("split (channels)", True),
                           (" | ".join(str(s.mscsa_channels) for s in facts.stages), False),
                           (f"g1..g{len(facts.stages)} at {_size(facts.mscsa_grid)}", False)], NEUTRAL)
    if out.kind == "dense":
        conv_first = out.fusion_order == "conv_first"
        fusion_boxes: list[Box | None] = []
        for s, (part, channels), shape in zip(facts.stages, out.fusion_channels, out.output_shapes):
            if tuple(shape[-2:]) == tuple(facts.mscsa_grid):
                resize = f"no resize: already {_size(shape[-2:])}"
            else:
                resize = (f"{'convs, then upsample' if conv_first else 'upsample, then convs'} "
                          f"{_size(facts.mscsa_grid)} → {_size(shape[-2:])}")
            lines = [(f"fuse g{s.number} into F{s.number}", True),
                     (f"1x1 conv+BN {part} → {channels} ch (w, b)", False),
                     (resize, False),
                     (f"F{s.number}·hardsigmoid(w) + b → {shape[0]} ch · {_size(shape[-2:])}", False)]
            fusion_boxes.append(Box(f"fusion{s.number}", lines, STAGE_COLOURS[(s.number - 1) % 4]))
        strides = ", ".join(str(s.stride) for s in facts.stages)
        outputs = Box("outputs", [(f"{len(out.output_shapes)} fused maps", True), (f"strides {strides}", False),
                                   ("→ FPN / detector / segmenter", False)], HEAD_COLOUR)
        arrows = [Arrow((split, "right"), (box, "left")) for box in fusion_boxes if box is not None]
        arrows += [Arrow((box, "right"), (outputs, "left")) for box in fusion_boxes if box is not None]
        group = Group("output", "Dense fusion (Fig. 5): back into the backbone maps",
                       [Column([split]), Column(fusion_boxes, grid=True), Column([outputs])])
        return [group], arrows, split, "backbone maps F1..F4 (skip) into the fusion"

    # TopFormer's segmentation model: injection into the token maps, then its light head.
    sim_boxes: list[Box | None] = []
    for s, injected in zip(facts.stages, out.injected):
        if injected:
            lines = [(f"inject g{s.number} into T{s.number}", True),
                     (f"T{s.number}: {s.channels} → {out.inject_channels} ch · {_size(s.map_size)}", False),
                     (f"g{s.number}: {s.mscsa_channels} → {out.inject_channels} ch (gate, embed)", False)]
        else:
            lines = [(f"g{s.number}: not injected", True), ("(as in TopFormer)", False)]
        sim_boxes.append(Box(f"inject{s.number}", lines, STAGE_COLOURS[(s.number - 1) % 4]))
    logits = out.output_shapes[0]
    head = Box("head", [("Segmentation head", True), ("sum of injected maps → 1x1 convs", False),
                         (f"{out.num_classes} classes · {_size(logits[-2:])} logits", False)], HEAD_COLOUR)
    arrows = [Arrow((split, "right"), (box, "left")) for box, on in zip(sim_boxes, out.injected) if on and box]
    arrows += [Arrow((box, "right"), (head, "left")) for box, on in zip(sim_boxes, out.injected) if on and box]
    group = Group("output", "TopFormer injection + segmentation head",
                   [Column([split]), Column(sim_boxes, grid=True), Column([head])])
    return [group], arrows, split, "token maps T2..T4 (skip) into the injection"


def model_diagram(model: nn.Module, input_size: tuple[int, int] = (224, 224),
                  observation: ModelObservation | None = None) -> Figure:
    """A block diagram of ``model`` at ``input_size`` (height, width): input, backbone stages,
    multi-stage aggregation, MSCSA blocks and head or dense fusion, every number read from the
    model and one forward pass. A plain ``Figure`` (no pyplot state) on an Agg canvas, sized to
    its content (saved as it is: ``bbox_inches="tight"`` would draw it twice only to add a margin);
    ``save_diagram`` / ``diagram_svg`` write it.
    ``observation``: a forward pass already observed at ``input_size`` (``analysis.observe``)."""
    facts = diagram_facts(model, input_size, observation)
    title, subtitle = _headline(facts)
    header_width = max([text_width(title, TITLE_SIZE, True)] + [text_width(t, SUBTITLE_SIZE) for t in subtitle])
    header_height = line_height(TITLE_SIZE) + sum(line_height(SUBTITLE_SIZE) for _ in subtitle) + 0.12

    input_box = Box("input", [("Input", True), (f"{facts.in_chans} ch · {_size(facts.input_size)}", False)], NEUTRAL)
    stages = _stage_boxes(facts)
    pools = _aggregation_boxes(facts)
    concat = _concat_box(facts)
    blocks = [_block_box(facts, first, last) for first, last in _block_runs(facts.blocks)]
    output_groups, output_arrows, first_output, skip_label = _output_groups(facts)
    backbone_title = ("Token pyramid" if facts.task == "segmentation" else "Backbone") + f": {facts.backbone}"
    groups = [
        Group("input", "Input", [Column([input_box], anchor_row=0)]),
        Group("backbone", backbone_title, [Column(list(stages), grid=True)]),
        Group("aggregation", f"Multi-stage aggregation (to 1/{facts.pool_stride})",
               [Column(list(pools), grid=True), Column([concat])]),
        Group("blocks", f"MSCSA: {len(facts.blocks)} block{'s' if len(facts.blocks) != 1 else ''}",
               [Column([box]) for box in blocks]),
        *output_groups,
    ]
    width, height = layout(groups, header_width, header_height, skip=bool(skip_label))

    arrows = [Arrow((input_box, "right"), (stages[0], "left"))]
    arrows += [Arrow((a, "bottom"), (b, "top")) for a, b in zip(stages, stages[1:])]
    arrows += [Arrow((stage, "right"), (pool, "left")) for stage, pool in zip(stages, pools)]
    arrows += [Arrow((pool, "right"), (concat, "left")) for pool in pools]
    chain = [concat, *blocks, first_output]
    arrows += [Arrow((a, "right"), (b, "left")) for a, b in zip(chain, chain[1:])]
    arrows += output_arrows

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_xlim(0.0, width)
    axes.set_ylim(0.0, height)
    axes.set_axis_off()

    axes.text(MARGIN, height - MARGIN, title, ha="left", va="top", fontproperties=font(TITLE_SIZE, True),
              gid="title", parse_math=False)
    cursor = MARGIN + line_height(TITLE_SIZE) + 0.04
    for index, line in enumerate(subtitle):
        axes.text(MARGIN, height - cursor, line, ha="left", va="top", fontproperties=font(SUBTITLE_SIZE),
                  color="#333333", gid=f"subtitle-{index}", parse_math=False)
        cursor += line_height(SUBTITLE_SIZE)

    frame_top = MARGIN + header_height
    frame_bottom = height - MARGIN - (SKIP_BAND if skip_label else 0.0)
    for group in groups:
        axes.add_patch(FancyBboxPatch(
            (group.left, height - frame_bottom), group.width, frame_bottom - frame_top,
            boxstyle="round,pad=0,rounding_size=0.08", facecolor="#fafafa", edgecolor="#bbbbbb", linewidth=0.8,
            zorder=0, gid=f"group-{group.key}",
        ))
        axes.text(group.left + group.width / 2, height - frame_top - FRAME_PAD / 2, group.title, ha="center",
                  va="top", fontproperties=font(GROUP_SIZE, True), color="#222222", zorder=1,
                  gid=f"group-{group.key}-text-0", parse_math=False)
        for column in group.columns:
            for box in column.boxes:
                if box is not None:
                    box.draw(axes, height)

    for arrow in arrows:
        (x0, y0), (x1, y1) = anchor(*arrow.start), anchor(*arrow.end)
        axes.add_patch(FancyArrowPatch((x0, height - y0), (x1, height - y1), arrowstyle="-|>", mutation_scale=9,
                                       color=EDGE, linewidth=0.9, shrinkA=1, shrinkB=1, zorder=3))

    if skip_label:  # the backbone maps go around the MSCSA branch into the fusion / injection
        source = stages[-1]
        target = next(c for c in groups[-1].columns if c.grid).boxes[-1]
        assert target is not None
        (sx, sy), (tx, ty) = anchor(source, "bottom"), anchor(target, "bottom")
        bus = frame_bottom + SKIP_BAND * 0.45
        axes.add_line(Line2D([sx, sx, tx], [height - sy, height - bus, height - bus], color=EDGE, linewidth=0.9,
                             linestyle="--", zorder=3))
        axes.add_patch(FancyArrowPatch((tx, height - bus), (tx, height - ty), arrowstyle="-|>", mutation_scale=9,
                                       color=EDGE, linewidth=0.9, linestyle="--", shrinkA=0, shrinkB=1, zorder=3))
        label_x = (sx + tx) / 2
        axes.text(label_x, height - bus - 0.03, skip_label, ha="center", va="top", fontproperties=font(BODY_SIZE),
                  color="#333333", gid="skip-text-0", parse_math=False,
                  bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none"))
    return figure


# =========================================================================== export
def figure_svg(figure: Figure) -> str:
    """``figure`` as SVG text, its words kept as text (searchable, selectable), without a date
    (the same model gives the same file)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def diagram_svg(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> str:
    """The diagram of ``model`` at ``input_size`` as SVG text."""
    return figure_svg(model_diagram(model, input_size))


def save_diagram(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (224, 224)) -> Path:
    """Write the diagram to ``path``: SVG or PNG by its suffix (the folder is created)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DIAGRAM_FORMATS:
        raise ExportError(f"diagrams are written as {' or '.join(DIAGRAM_FORMATS)}, not {path.suffix or 'no suffix'!r}")
    figure = model_diagram(model, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        path.write_text(figure_svg(figure), encoding="utf-8")
    else:
        figure.savefig(path, format="png", dpi=150)
    return path
