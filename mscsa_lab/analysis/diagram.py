"""A block diagram of a built MSCSA model, drawn from the model itself (the Build tab's picture).

Why from the model and not from its settings: a diagram that repeats the configuration can say
what was asked for while the model does something else (a squeeze conv that was not built, a
backbone whose stride-32 map is 8x7 at this input, a block without Intra-FFN). Every number here is
read from the built modules (heads, key and value dims, squeeze and FFN widths, classes) or from one
forward pass at the requested input size (stage map sizes through ``architecture_tables``, each CSA
layer's query and key/value grids through hooks, the output shapes), so the picture is what runs.

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
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.textpath import text_to_path
from torch import nn

from mscsa_lab.analysis.architecture import architecture_tables
from mscsa_lab.models.mscsa import MSCSA, FFN, ClassificationHead, CrossScaleAttention, DenseFusion, IntraFFN

__all__ = [
    "model_diagram",
    "save_diagram",
    "diagram_svg",
    "figure_svg",
    "diagram_facts",
    "DiagramFacts",
    "StageFacts",
    "AttentionFacts",
    "FFNFacts",
    "BlockFacts",
    "OutputFacts",
    "DIAGRAM_FORMATS",
    "MAX_BLOCKS_DRAWN",
]

DIAGRAM_FORMATS = (".svg", ".png")
# Up to this depth every block gets its own box (a reader counts them); deeper models draw each
# run of identical blocks once, so a depth-24 model stays readable.
MAX_BLOCKS_DRAWN = 4


# =========================================================================== facts read from the model
@dataclass(frozen=True)
class StageFacts:
    """One backbone stage and what the aggregation does with it."""

    number: int  # 1..4
    stride: int
    channels: int
    map_size: tuple[int, int]
    mscsa_channels: int  # Ci' (after the squeeze conv, if any)
    squeezed: bool
    resize: str  # "avg-pool", "as is" or "upsample (<mode>)"


@dataclass(frozen=True)
class AttentionFacts:
    """One Cross-Scale Attention layer: its sizes and the grids its forward pass really used."""

    num_heads: int
    key_dim: int
    value_dim: int
    query_grid: tuple[int, int]
    scale_grids: tuple[tuple[int, int], ...]  # X0, X1, X2 key/value grids
    use_pcp: bool
    use_msp: bool
    downsample: str

    @property
    def scale_tokens(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.scale_grids)


@dataclass(frozen=True)
class FFNFacts:
    """An FFN (one part) or an Intra-FFN (one part per stage): widths in and hidden widths."""

    intra: bool
    widths: tuple[int, ...]
    hidden: tuple[int, ...]


@dataclass(frozen=True)
class BlockFacts:
    """One MSCSA block: CSA, Intra-FFN (or FFN), CSA, FFN, each a pre-norm residual branch."""

    attentions: tuple[AttentionFacts, AttentionFacts]
    mixer: FFNFacts  # the second sub-layer: Intra-FFN, or an FFN when Intra-FFN is off
    ffn: FFNFacts


@dataclass(frozen=True)
class OutputFacts:
    """What the model does after the MSCSA blocks, with the shapes its forward pass returned."""

    kind: str  # "classification", "dense" or "segmentation"
    output_shapes: tuple[tuple[int, ...], ...]  # without the batch dimension
    head_features: int = 0  # classification: the head's input width
    num_classes: int = 0
    global_pool: str = "avg"
    fusion_channels: tuple[tuple[int, int], ...] = ()  # dense: per stage (Ci', Ci) of the injection convs
    fusion_order: str = ""
    injected: tuple[bool, ...] = ()  # segmentation: which stages receive an injection
    inject_channels: int = 0


@dataclass(frozen=True)
class DiagramFacts:
    """Everything the diagram shows, read from one built model at one input size."""

    backbone: str
    task: str
    input_size: tuple[int, int]
    in_chans: int
    stages: tuple[StageFacts, ...]
    pool_stride: int
    mscsa_grid: tuple[int, int]
    mscsa_channels: int
    blocks: tuple[BlockFacts, ...]
    output: OutputFacts
    params: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _first_conv(module: nn.Module) -> nn.Conv2d:
    """The first Conv2d in ``module`` (a ConvBN, or the Conv2d that ``fuse()`` left in its place)."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child
    raise TypeError(f"{type(module).__name__} has no convolution")


def _ffn_facts(module: nn.Module) -> FFNFacts:
    if isinstance(module, IntraFFN):
        convs = [_first_conv(part.fc1) for part in module.stage_ffns]
        return FFNFacts(True, tuple(c.in_channels for c in convs), tuple(c.out_channels for c in convs))
    if isinstance(module, FFN):
        conv = _first_conv(module.fc1)
        return FFNFacts(False, (conv.in_channels,), (conv.out_channels,))
    raise TypeError(f"expected an FFN or Intra-FFN, got {type(module).__name__}")


def _observe_forward(model: nn.Module, mscsa: MSCSA,
                     input_size: tuple[int, int]) -> tuple[dict[Any, tuple[int, ...]], Any]:
    """Run the model once on zeros and record the shapes the diagram needs: the multi-stage map,
    each CSA layer's query and per-scale key maps. Eval mode and no gradients, so no BN statistic
    moves; the model's mode is restored afterwards."""
    shapes: dict[Any, tuple[int, ...]] = {}

    def remember(key: Any):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            shapes[key] = tuple(output.shape[1:])
        return hook

    handles = [mscsa.aggregation.register_forward_hook(remember("map"))]
    for block_index, block in enumerate(mscsa.blocks):
        for layer_index, attention in enumerate((block.attn1, block.attn2)):
            handles.append(attention.query.register_forward_hook(remember(("query", block_index, layer_index))))
            for scale_index, projection in enumerate(attention.key_proj):
                key = ("key", block_index, layer_index, scale_index)
                handles.append(projection.register_forward_hook(remember(key)))
    like = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(torch.zeros(1, model.in_chans, *input_size, device=like.device, dtype=like.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return shapes, output


def _attention_facts(attention: CrossScaleAttention, shapes: dict[Any, tuple[int, ...]], block_index: int,
                     layer_index: int) -> AttentionFacts:
    query = shapes[("query", block_index, layer_index)]
    grids = tuple(tuple(shapes[("key", block_index, layer_index, s)][-2:]) for s in range(len(attention.key_proj)))
    return AttentionFacts(
        num_heads=attention.num_heads,
        key_dim=attention.key_dim,
        value_dim=attention.value_dim,
        query_grid=tuple(query[-2:]),
        scale_grids=grids,
        use_pcp=attention.conv_path is not None,
        use_msp=attention.use_msp,
        downsample=attention.downsample,
    )


def _resize_kind(map_size: Sequence[int], grid: Sequence[int], upsample_mode: str) -> str:
    """How ``MultiStageAggregation`` brings a stage map to the common grid (its own rule)."""
    if tuple(map_size) == tuple(grid):
        return "as is"
    if map_size[0] >= grid[0] and map_size[1] >= grid[1]:
        return "avg-pool"
    return f"upsample ({upsample_mode})"


def _output_facts(model: nn.Module, task: str, output: Any) -> OutputFacts:
    outputs = output if isinstance(output, (list, tuple)) else [output]
    shapes = tuple(tuple(o.shape[1:]) for o in outputs)
    if task == "classification":
        head = model.head
        if not isinstance(head, ClassificationHead):
            raise TypeError(f"a classification model needs a ClassificationHead, got {type(head).__name__}")
        return OutputFacts("classification", shapes, head_features=head.in_features, num_classes=head.num_classes,
                           global_pool=head.global_pool)
    if task == "dense":
        fusion = model.fusion
        if not isinstance(fusion, DenseFusion):
            raise TypeError(f"a dense model needs a DenseFusion, got {type(fusion).__name__}")
        convs = [_first_conv(conv) for conv in fusion.weight_convs]
        return OutputFacts("dense", shapes, fusion_channels=tuple((c.in_channels, c.out_channels) for c in convs),
                           fusion_order=fusion.order)
    if task == "segmentation":
        injected = tuple(i in model.inject_indices for i in range(len(model.split_channels)))
        return OutputFacts("segmentation", shapes, num_classes=model.decode_head.cls.out_channels, injected=injected,
                           inject_channels=model.num_features)
    raise TypeError(f"unknown task {task!r}")


def diagram_facts(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> DiagramFacts:
    """The numbers the diagram draws, read from ``model`` (an ``MSCSANet`` or TopFormer's
    segmentation model with MSCSA) and one forward pass at ``input_size`` (height, width)."""
    mscsa = getattr(model, "mscsa", None)
    if not isinstance(mscsa, MSCSA) or not hasattr(model, "summary"):
        raise TypeError(
            f"a diagram needs a backbone+MSCSA model (MSCSANet or TopFormerSegMSCSA) with its readable MSCSA "
            f"modules, got {type(model).__name__}"
        )
    summary = architecture_tables(model, input_size)["summary"]
    height, width = summary["input_size"]
    shapes, output = _observe_forward(model, mscsa, (height, width))
    grid = tuple(shapes["map"][-2:])
    aggregation = mscsa.aggregation
    stages = []
    for index, stage in enumerate(summary["stages"]):
        squeeze = aggregation.squeeze[index] if aggregation.squeeze is not None else None
        stages.append(StageFacts(
            number=index + 1,
            stride=stage["stride"],
            channels=stage["channels"],
            map_size=tuple(stage["map_size"]),
            mscsa_channels=_first_conv(squeeze).out_channels if squeeze is not None else stage["channels"],
            squeezed=squeeze is not None,
            resize=_resize_kind(stage["map_size"], grid, aggregation.upsample_mode),
        ))
    blocks = tuple(
        BlockFacts(
            attentions=(_attention_facts(block.attn1, shapes, b, 0), _attention_facts(block.attn2, shapes, b, 1)),
            mixer=_ffn_facts(block.intra_ffn),
            ffn=_ffn_facts(block.ffn),
        )
        for b, block in enumerate(mscsa.blocks)
    )
    return DiagramFacts(
        backbone=str(summary["backbone"]),
        task=str(summary["task"]),
        input_size=(height, width),
        in_chans=int(model.in_chans),
        stages=tuple(stages),
        pool_stride=int(aggregation.pool_stride),
        mscsa_grid=grid,
        mscsa_channels=int(shapes["map"][0]),
        blocks=blocks,
        output=_output_facts(model, str(summary["task"]), output),
        params={str(k): int(v) for k, v in summary["params"].items()},
        settings=dict(summary.get("config", {})),
    )


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


# =========================================================================== layout engine
_FONT_FAMILY = "DejaVu Sans"  # matplotlib ships it, so measuring and drawing use the same glyphs
_TITLE_SIZE = 12.0
_SUBTITLE_SIZE = 8.5
_GROUP_SIZE = 9.0
_BOX_TITLE_SIZE = 8.5
_BODY_SIZE = 8.0
_LINE_SPACING = 1.32
_PAD_X, _PAD_Y = 0.10, 0.07  # inches inside a box
_CHILD_GAP = 0.06
_COLUMN_GAP = 0.42  # between columns, room for an arrow
_GROUP_GAP = 0.36
_FRAME_PAD = 0.12
_ROW_GAP = 0.24
_MARGIN = 0.15
_SKIP_BAND = 0.42

_STAGE_COLOURS = ("#dbe9f6", "#dcefd9", "#fbe5cf", "#eadcf2")
_NEUTRAL = "#eeeeee"
_MSCSA_COLOUR = "#f6f1dc"
_CSA_COLOUR = "#fde0c5"
_FFN_COLOUR = "#d8efe6"
_HEAD_COLOUR = "#f4d8dc"
_EDGE = "#555555"


def _font(size: float, bold: bool = False) -> FontProperties:
    return FontProperties(family=_FONT_FAMILY, size=size, weight="bold" if bold else "normal")


def _text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in inches, with a margin for renderer hinting and for SVG viewers' own fonts."""
    width, _, _ = text_to_path.get_text_width_height_descent(text, _font(size, bold), ismath=False)
    return (width * 1.06 + 2.0) / 72.0


def _line_height(size: float) -> float:
    return size * _LINE_SPACING / 72.0


@dataclass
class _Box:
    """A rounded box of text lines, optionally holding child boxes stacked under its lines."""

    key: str
    lines: list[tuple[str, bool]]  # (text, bold)
    fill: str
    align: str = "center"
    children: list["_Box"] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    left: float = 0.0
    top: float = 0.0  # distance from the figure's top edge

    def measure(self) -> None:
        for child in self.children:
            child.measure()
        text_width = max((_text_width(t, _BOX_TITLE_SIZE if b else _BODY_SIZE, b) for t, b in self.lines), default=0)
        child_width = max((c.width for c in self.children), default=0.0)
        self.width = max(text_width, child_width) + 2 * _PAD_X
        self.height = 2 * _PAD_Y + self._text_height()
        if self.children:
            self.height += sum(c.height for c in self.children) + _CHILD_GAP * len(self.children)

    def _text_height(self) -> float:
        return sum(_line_height(_BOX_TITLE_SIZE if b else _BODY_SIZE) for _, b in self.lines)

    def set_width(self, width: float) -> None:
        self.width = max(self.width, width)
        for child in self.children:
            child.set_width(self.width - 2 * _PAD_X)

    def place(self, left: float, top: float) -> None:
        self.left, self.top = left, top
        cursor = top + _PAD_Y + self._text_height() + _CHILD_GAP
        for child in self.children:
            child.place(left + _PAD_X, cursor)
            cursor += child.height + _CHILD_GAP

    @property
    def middle(self) -> float:
        return self.top + self.height / 2

    def draw(self, axes: Any, figure_height: float, gid: str | None = None) -> None:
        gid = gid or f"box-{self.key}"
        axes.add_patch(FancyBboxPatch(
            (self.left, figure_height - self.top - self.height), self.width, self.height,
            boxstyle="round,pad=0,rounding_size=0.05", facecolor=self.fill, edgecolor=_EDGE, linewidth=0.8,
            zorder=2, gid=gid,
        ))
        cursor = self.top + _PAD_Y
        for index, (text, bold) in enumerate(self.lines):
            size = _BOX_TITLE_SIZE if bold else _BODY_SIZE
            x = self.left + _PAD_X if self.align == "left" else self.left + self.width / 2
            axes.text(x, figure_height - cursor, text, ha=self.align, va="top", fontproperties=_font(size, bold),
                      zorder=4, gid=f"{gid}-text-{index}", parse_math=False)
            cursor += _line_height(size)
        for child in self.children:
            child.draw(axes, figure_height, f"{gid}-{child.key}")


@dataclass
class _Column:
    """Boxes placed one above the other: a grid column has one slot per stage row (None = empty);
    a single column holds one box, centred on the content or on one stage row (``anchor_row``)."""

    boxes: list[_Box | None]
    grid: bool = False
    anchor_row: int | None = None

    @property
    def width(self) -> float:
        return max((b.width for b in self.boxes if b is not None), default=0.0)


@dataclass
class _Group:
    """A titled panel of columns (input, backbone, aggregation, MSCSA blocks, output)."""

    key: str
    title: str
    columns: list[_Column]
    left: float = 0.0
    width: float = 0.0


@dataclass
class _Arrow:
    start: tuple[_Box, str]  # (box, side): side "right", "left", "top", "bottom"
    end: tuple[_Box, str]
    label: str = ""


def _anchor(box: _Box, side: str) -> tuple[float, float]:
    """A point on a box's side, (x, distance from the top)."""
    if side == "right":
        return box.left + box.width, box.middle
    if side == "left":
        return box.left, box.middle
    if side == "top":
        return box.left + box.width / 2, box.top
    return box.left + box.width / 2, box.top + box.height


# =========================================================================== building the picture
def _stage_boxes(facts: DiagramFacts) -> list[_Box]:
    return [
        _Box(f"stage{s.number}", [(f"Stage {s.number} · stride {s.stride}", True),
                                  (f"{s.channels} ch · {_size(s.map_size)}", False)],
             _STAGE_COLOURS[(s.number - 1) % 4])
        for s in facts.stages
    ]


def _aggregation_boxes(facts: DiagramFacts) -> list[_Box]:
    boxes = []
    grid = _size(facts.mscsa_grid)
    for s in facts.stages:
        resize = f"kept at {grid}" if s.resize == "as is" else f"{s.resize} {_size(s.map_size)} → {grid}"
        squeeze = (f"squeeze 1x1 conv+BN {s.channels} → {s.mscsa_channels} ch" if s.squeezed
                   else f"no squeeze · {s.mscsa_channels} ch")
        boxes.append(_Box(f"pool{s.number}", [(f"F{s.number}: {resize}", True), (squeeze, False)],
                          _STAGE_COLOURS[(s.number - 1) % 4]))
    return boxes


def _concat_box(facts: DiagramFacts) -> _Box:
    widths = " + ".join(str(s.mscsa_channels) for s in facts.stages)
    return _Box("concat", [("concat (channels)", True), (widths, False),
                           (f"= {facts.mscsa_channels} ch · {_size(facts.mscsa_grid)}", False),
                           (f"{facts.mscsa_grid[0] * facts.mscsa_grid[1]} tokens", False)], _NEUTRAL)


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


def _block_box(facts: DiagramFacts, first: int, last: int) -> _Box:
    block = facts.blocks[first - 1]
    depth = len(facts.blocks)
    if first == last:
        title = f"MSCSA block {first} of {depth}"
    else:
        title = f"MSCSA blocks {first}–{last} of {depth} ({last - first + 1} identical)"
    children = [
        _Box("csa1", _attention_lines(1, block.attentions[0]), _CSA_COLOUR, align="left"),
        _Box("mixer", _ffn_lines(block.mixer, replaces_intra=True), _FFN_COLOUR, align="left"),
        _Box("csa2", _attention_lines(2, block.attentions[1]), _CSA_COLOUR, align="left"),
        _Box("ffn", _ffn_lines(block.ffn, replaces_intra=False), _FFN_COLOUR, align="left"),
    ]
    lines = [(title, True), ("each: x + sublayer(BN(x))", False)]
    return _Box(f"block{first}" if first == last else f"blocks{first}to{last}", lines, _MSCSA_COLOUR, children=children)


def _output_groups(facts: DiagramFacts) -> tuple[list[_Group], list[_Arrow], _Box | None, str]:
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
        head = _Box("head", lines, _HEAD_COLOUR)
        return [_Group("output", "Classification head (Fig. 4)", [_Column([head])])], [], head, ""

    split = _Box("split", [("split (channels)", True),
                           (" | ".join(str(s.mscsa_channels) for s in facts.stages), False),
                           (f"g1..g{len(facts.stages)} at {_size(facts.mscsa_grid)}", False)], _NEUTRAL)
    if out.kind == "dense":
        conv_first = out.fusion_order == "conv_first"
        fusion_boxes: list[_Box | None] = []
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
            fusion_boxes.append(_Box(f"fusion{s.number}", lines, _STAGE_COLOURS[(s.number - 1) % 4]))
        strides = ", ".join(str(s.stride) for s in facts.stages)
        outputs = _Box("outputs", [(f"{len(out.output_shapes)} fused maps", True), (f"strides {strides}", False),
                                   ("→ FPN / detector / segmenter", False)], _HEAD_COLOUR)
        arrows = [_Arrow((split, "right"), (box, "left")) for box in fusion_boxes if box is not None]
        arrows += [_Arrow((box, "right"), (outputs, "left")) for box in fusion_boxes if box is not None]
        group = _Group("output", "Dense fusion (Fig. 5): back into the backbone maps",
                       [_Column([split]), _Column(fusion_boxes, grid=True), _Column([outputs])])
        return [group], arrows, split, "backbone maps F1..F4 (skip) into the fusion"

    # TopFormer's segmentation model: injection into the token maps, then its light head.
    sim_boxes: list[_Box | None] = []
    for s, injected in zip(facts.stages, out.injected):
        if injected:
            lines = [(f"inject g{s.number} into T{s.number}", True),
                     (f"T{s.number}: {s.channels} → {out.inject_channels} ch · {_size(s.map_size)}", False),
                     (f"g{s.number}: {s.mscsa_channels} → {out.inject_channels} ch (gate, embed)", False)]
        else:
            lines = [(f"g{s.number}: not injected", True), ("(as in TopFormer)", False)]
        sim_boxes.append(_Box(f"inject{s.number}", lines, _STAGE_COLOURS[(s.number - 1) % 4]))
    logits = out.output_shapes[0]
    head = _Box("head", [("Segmentation head", True), ("sum of injected maps → 1x1 convs", False),
                         (f"{out.num_classes} classes · {_size(logits[-2:])} logits", False)], _HEAD_COLOUR)
    arrows = [_Arrow((split, "right"), (box, "left")) for box, on in zip(sim_boxes, out.injected) if on and box]
    arrows += [_Arrow((box, "right"), (head, "left")) for box, on in zip(sim_boxes, out.injected) if on and box]
    group = _Group("output", "TopFormer injection + segmentation head",
                   [_Column([split]), _Column(sim_boxes, grid=True), _Column([head])])
    return [group], arrows, split, "token maps T2..T4 (skip) into the injection"


def _layout(groups: list[_Group], header_width: float, header_height: float, skip: bool) -> tuple[float, float]:
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
    grid_height = sum(row_heights) + _ROW_GAP * max(rows - 1, 0)
    single_heights = [c.boxes[0].height for g in groups for c in g.columns if not c.grid and c.boxes[0] is not None]
    content_height = max([grid_height, *single_heights])

    group_title_height = _line_height(_GROUP_SIZE) + 0.06
    frame_top = _MARGIN + header_height
    content_top = frame_top + _FRAME_PAD + group_title_height
    grid_top = content_top + (content_height - grid_height) / 2
    row_middles, cursor = [], grid_top
    for height in row_heights:
        row_middles.append(cursor + height / 2)
        cursor += height + _ROW_GAP

    x = _MARGIN
    for group in groups:
        content_width = sum(c.width for c in group.columns) + _COLUMN_GAP * (len(group.columns) - 1)
        title_width = _text_width(group.title, _GROUP_SIZE, True)
        group.left, group.width = x, max(content_width, title_width) + 2 * _FRAME_PAD
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
            column_left += column.width + _COLUMN_GAP
        x += group.width + _GROUP_GAP
    width = max(x - _GROUP_GAP + _MARGIN, header_width + 2 * _MARGIN)
    height = content_top + content_height + _FRAME_PAD + _MARGIN + (_SKIP_BAND if skip else 0.0)
    return width, height


def model_diagram(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> Figure:
    """A block diagram of ``model`` at ``input_size`` (height, width): input, backbone stages,
    multi-stage aggregation, MSCSA blocks and head or dense fusion, every number read from the
    model and one forward pass. A plain ``Figure`` (no pyplot state) on an Agg canvas, sized to
    its content; save it with ``bbox_inches="tight"`` or use ``save_diagram`` / ``diagram_svg``."""
    facts = diagram_facts(model, input_size)
    title, subtitle = _headline(facts)
    header_width = max([_text_width(title, _TITLE_SIZE, True)] + [_text_width(t, _SUBTITLE_SIZE) for t in subtitle])
    header_height = _line_height(_TITLE_SIZE) + sum(_line_height(_SUBTITLE_SIZE) for _ in subtitle) + 0.12

    input_box = _Box("input", [("Input", True), (f"{facts.in_chans} ch · {_size(facts.input_size)}", False)], _NEUTRAL)
    stages = _stage_boxes(facts)
    pools = _aggregation_boxes(facts)
    concat = _concat_box(facts)
    blocks = [_block_box(facts, first, last) for first, last in _block_runs(facts.blocks)]
    output_groups, output_arrows, first_output, skip_label = _output_groups(facts)
    backbone_title = ("Token pyramid" if facts.task == "segmentation" else "Backbone") + f": {facts.backbone}"
    groups = [
        _Group("input", "Input", [_Column([input_box], anchor_row=0)]),
        _Group("backbone", backbone_title, [_Column(list(stages), grid=True)]),
        _Group("aggregation", f"Multi-stage aggregation (to 1/{facts.pool_stride})",
               [_Column(list(pools), grid=True), _Column([concat])]),
        _Group("blocks", f"MSCSA: {len(facts.blocks)} block{'s' if len(facts.blocks) != 1 else ''}",
               [_Column([box]) for box in blocks]),
        *output_groups,
    ]
    width, height = _layout(groups, header_width, header_height, skip=bool(skip_label))

    arrows = [_Arrow((input_box, "right"), (stages[0], "left"))]
    arrows += [_Arrow((a, "bottom"), (b, "top")) for a, b in zip(stages, stages[1:])]
    arrows += [_Arrow((stage, "right"), (pool, "left")) for stage, pool in zip(stages, pools)]
    arrows += [_Arrow((pool, "right"), (concat, "left")) for pool in pools]
    chain = [concat, *blocks, first_output]
    arrows += [_Arrow((a, "right"), (b, "left")) for a, b in zip(chain, chain[1:])]
    arrows += output_arrows

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_xlim(0.0, width)
    axes.set_ylim(0.0, height)
    axes.set_axis_off()

    axes.text(_MARGIN, height - _MARGIN, title, ha="left", va="top", fontproperties=_font(_TITLE_SIZE, True),
              gid="title", parse_math=False)
    cursor = _MARGIN + _line_height(_TITLE_SIZE) + 0.04
    for index, line in enumerate(subtitle):
        axes.text(_MARGIN, height - cursor, line, ha="left", va="top", fontproperties=_font(_SUBTITLE_SIZE),
                  color="#333333", gid=f"subtitle-{index}", parse_math=False)
        cursor += _line_height(_SUBTITLE_SIZE)

    frame_top = _MARGIN + header_height
    frame_bottom = height - _MARGIN - (_SKIP_BAND if skip_label else 0.0)
    for group in groups:
        axes.add_patch(FancyBboxPatch(
            (group.left, height - frame_bottom), group.width, frame_bottom - frame_top,
            boxstyle="round,pad=0,rounding_size=0.08", facecolor="#fafafa", edgecolor="#bbbbbb", linewidth=0.8,
            zorder=0, gid=f"group-{group.key}",
        ))
        axes.text(group.left + group.width / 2, height - frame_top - _FRAME_PAD / 2, group.title, ha="center",
                  va="top", fontproperties=_font(_GROUP_SIZE, True), color="#222222", zorder=1,
                  gid=f"group-{group.key}-text-0", parse_math=False)
        for column in group.columns:
            for box in column.boxes:
                if box is not None:
                    box.draw(axes, height)

    for arrow in arrows:
        (x0, y0), (x1, y1) = _anchor(*arrow.start), _anchor(*arrow.end)
        axes.add_patch(FancyArrowPatch((x0, height - y0), (x1, height - y1), arrowstyle="-|>", mutation_scale=9,
                                       color=_EDGE, linewidth=0.9, shrinkA=1, shrinkB=1, zorder=3))

    if skip_label:  # the backbone maps go around the MSCSA branch into the fusion / injection
        source = stages[-1]
        target = next(c for c in groups[-1].columns if c.grid).boxes[-1]
        assert target is not None
        (sx, sy), (tx, ty) = _anchor(source, "bottom"), _anchor(target, "bottom")
        bus = frame_bottom + _SKIP_BAND * 0.45
        axes.add_line(Line2D([sx, sx, tx], [height - sy, height - bus, height - bus], color=_EDGE, linewidth=0.9,
                             linestyle="--", zorder=3))
        axes.add_patch(FancyArrowPatch((tx, height - bus), (tx, height - ty), arrowstyle="-|>", mutation_scale=9,
                                       color=_EDGE, linewidth=0.9, linestyle="--", shrinkA=0, shrinkB=1, zorder=3))
        label_x = (sx + tx) / 2
        axes.text(label_x, height - bus - 0.03, skip_label, ha="center", va="top", fontproperties=_font(_BODY_SIZE),
                  color="#333333", gid="skip-text-0", parse_math=False,
                  bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none"))
    return figure


# =========================================================================== export
def figure_svg(figure: Figure) -> str:
    """``figure`` as SVG text, its words kept as text (searchable, selectable), without a date
    (the same model gives the same file)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def diagram_svg(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> str:
    """The diagram of ``model`` at ``input_size`` as SVG text."""
    return figure_svg(model_diagram(model, input_size))


def save_diagram(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (224, 224)) -> Path:
    """Write the diagram to ``path``: SVG or PNG by its suffix (the folder is created)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DIAGRAM_FORMATS:
        raise ValueError(f"diagrams are written as {' or '.join(DIAGRAM_FORMATS)}, not {path.suffix or 'no suffix'!r}")
    figure = model_diagram(model, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        path.write_text(figure_svg(figure), encoding="utf-8")
    else:
        figure.savefig(path, format="png", dpi=150, bbox_inches="tight")
    return path
