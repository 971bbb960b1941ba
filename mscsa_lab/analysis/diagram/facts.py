"""The numbers a model diagram shows, read from the built model and one observed forward pass.

Why from the model and not from its settings: a diagram that repeats the configuration can say what was
asked for while the model does something else (a squeeze conv that was not built, a backbone whose
stride-32 map is 8x7 at this input, a block without Intra-FFN). Every number here is read from the built
modules (heads, key and value dims, squeeze and FFN widths, classes) or from one forward pass at the
requested input size (``analysis.observe``: stage map sizes, each CSA layer's query and key/value grids,
the output shapes), so the picture is what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from mscsa_lab.analysis.architecture import architecture_tables
from mscsa_lab.analysis.observe import ModelObservation, observe_model
from mscsa_lab.models.mscsa import MSCSA, FFN, ClassificationHead, CrossScaleAttention, DenseFusion, IntraFFN

__all__ = ["diagram_facts", "DiagramFacts", "StageFacts", "AttentionFacts", "FFNFacts", "BlockFacts", "OutputFacts"]

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


def _output_facts(model: nn.Module, task: str, shapes: tuple[tuple[int, ...], ...]) -> OutputFacts:
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


def diagram_facts(model: nn.Module, input_size: tuple[int, int] = (224, 224),
                  observation: ModelObservation | None = None) -> DiagramFacts:
    """The numbers the diagram draws, read from ``model`` (an ``MSCSANet`` or TopFormer's
    segmentation model with MSCSA) and one forward pass at ``input_size`` (height, width): the given
    ``observation`` of it (``analysis.observe.observe_model``), or a pass made here."""
    mscsa = getattr(model, "mscsa", None)
    if not isinstance(mscsa, MSCSA) or not hasattr(model, "summary"):
        raise TypeError(
            f"a diagram needs a backbone+MSCSA model (MSCSANet or TopFormerSegMSCSA) with its readable MSCSA "
            f"modules, got {type(model).__name__}"
        )
    if observation is None or tuple(observation.input_size) != tuple(input_size):
        observation = observe_model(model, input_size)
    summary = architecture_tables(model, input_size, observation)["summary"]
    height, width = summary["input_size"]
    shapes = observation.shapes
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
        output=_output_facts(model, str(summary["task"]), observation.output_shapes),
        params={str(k): int(v) for k, v in summary["params"].items()},
        settings=dict(summary.get("config", {})),
    )
