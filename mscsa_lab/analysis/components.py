"""The named parts of a backbone+MSCSA model, in the paper's Table 1 vocabulary.

Both the FLOPs profiler and the latency benchmark walk the same list, so a row called
"CSA 1 (block 1)" means the same module in every table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from mscsa_lab.models.mscsa import CrossScaleAttention, IntraFFN, MSCSABlock
from mscsa_lab.models.mscsa_net import MSCSANet

__all__ = ["Component", "model_components", "component_total"]


@dataclass(frozen=True)
class Component:
    """One row: ``modules`` are the (called) module paths whose cost it sums; ``level`` 0 rows partition
    the whole model, level 1 and 2 rows break their parent down. A row with ``residual_of`` is its
    parent's cost minus its parent's child modules (e.g. the attention matmuls, which are ops
    inside a CSA module rather than modules of their own)."""

    name: str
    group: str
    level: int
    modules: tuple[str, ...] = ()
    residual_of: str | None = None
    children: tuple[str, ...] = field(default=(), compare=False)


def component_total(component: Component, per_path: Mapping[str, float]) -> float:
    """The one rule that turns per-module-path figures (FLOPs, parameters, bytes, seconds) into a row:
    a row sums its modules; a residual row is its parent minus its parent's child modules."""
    if component.residual_of is not None:
        return per_path.get(component.residual_of, 0) - sum(per_path.get(c, 0) for c in component.children)
    return sum(per_path.get(m, 0) for m in component.modules)


def _backbone_stage_paths(model: MSCSANet) -> list[tuple[int, str]]:
    """(stage number, module path) of each stage's module inside the timm feature model."""
    features = model.backbone.model
    names = features.feature_info.module_name()
    existing = dict(features.named_modules())
    paths = []
    for stage, index in enumerate(model.backbone.stage_indices, start=1):
        name = names[index]
        # FeatureListNet flattens names (stages.0 -> stages_0); FeatureGetterNet keeps them under model.
        for candidate in (name.replace(".", "_"), name, f"model.{name}"):
            if candidate in existing:
                paths.append((stage, f"backbone.model.{candidate}"))
                break
    return paths


def _csa_components(path: str, label: str, layer: CrossScaleAttention) -> list[Component]:
    rows = [
        Component(label, "csa", 0, (path,)),
        Component("Q projection", "csa", 1, (f"{path}.query",)),
    ]
    kv_modules = []
    for scale in range(layer.num_scales):
        modules = (f"{path}.key_proj.{scale}", f"{path}.value_proj.{scale}")
        if scale > 0:
            modules = (f"{path}.scale_downsamplers.{scale}",) + modules
        kv_modules.extend(modules)
    rows.append(Component(f"K/V projections ({layer.num_scales} scales)", "csa", 1, tuple(kv_modules)))
    for scale in range(layer.num_scales):
        modules = (f"{path}.key_proj.{scale}", f"{path}.value_proj.{scale}")
        if scale > 0:
            modules = (f"{path}.scale_downsamplers.{scale}",) + modules
        rows.append(Component(f"scale X{scale}" + (" (incl. down-sampling)" if scale else ""), "csa", 2, modules))
    children = [f"{path}.query", *kv_modules, f"{path}.proj"]
    if layer.conv_path is not None:
        children.append(f"{path}.conv_path")
    rows.append(Component("attention matmuls", "csa", 1, residual_of=path, children=tuple(children)))
    if layer.conv_path is not None:
        rows.append(Component("parallel conv path", "csa", 1, (f"{path}.conv_path",)))
    rows.append(Component("output projection", "csa", 1, (f"{path}.proj",)))
    return rows


def model_components(model: MSCSANet) -> list[Component]:
    """The Table 1 breakdown of ``model``: backbone (and stages), aggregation, per block each
    CSA, the Intra-FFN, the FFN and the pre-norm BNs, then the head or the dense fusion."""
    rows = [Component("backbone", "backbone", 0, ("backbone",))]
    stage_paths = _backbone_stage_paths(model)
    for stage, path in stage_paths:
        rows.append(Component(f"stage {stage}", "backbone", 1, (path,)))
    if stage_paths:
        rows.append(
            Component("stem and other", "backbone", 1, residual_of="backbone", children=tuple(p for _, p in stage_paths))
        )

    aggregation = model.mscsa.aggregation
    rows.append(Component("aggregation", "aggregation", 0, ("mscsa.aggregation",)))
    if aggregation.squeeze is not None:
        # Name each conv: a ModuleList is never called itself, so hooks on it would see nothing.
        squeeze = tuple(f"mscsa.aggregation.squeeze.{i}" for i in range(len(aggregation.squeeze)))
        rows.append(Component("pooling", "aggregation", 1, residual_of="mscsa.aggregation", children=squeeze))
        rows.append(Component("squeeze convs", "aggregation", 1, squeeze))

    for index, block in enumerate(model.mscsa.blocks):
        assert isinstance(block, MSCSABlock)
        prefix = f"mscsa.blocks.{index}"
        number = index + 1
        rows += _csa_components(f"{prefix}.attn1", f"CSA 1 (block {number})", block.attn1)
        intra_name = "Intra-FFN" if isinstance(block.intra_ffn, IntraFFN) else "FFN (in place of Intra-FFN)"
        intra_group = "intra_ffn" if isinstance(block.intra_ffn, IntraFFN) else "ffn"
        rows.append(Component(f"{intra_name} (block {number})", intra_group, 0, (f"{prefix}.intra_ffn",)))
        rows += _csa_components(f"{prefix}.attn2", f"CSA 2 (block {number})", block.attn2)
        rows.append(Component(f"FFN (block {number})", "ffn", 0, (f"{prefix}.ffn",)))
        rows.append(Component(f"pre-norm BNs (block {number})", "norm", 0,
                              tuple(f"{prefix}.norm{i}" for i in range(1, 5))))
    if model.head is not None:
        rows.append(Component("classification head", "head", 0, ("head",)))
    if model.fusion is not None:
        rows.append(Component("dense fusion", "fusion", 0, ("fusion",)))
    return rows

