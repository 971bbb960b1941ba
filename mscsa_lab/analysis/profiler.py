"""Per-component FLOPs and parameters of a backbone+MSCSA model (the paper's Table 1, extended).

FLOPs follow the paper: one multiply-add is one FLOP (fvcore's convention); ``convention="2x"``
gives the "FLOPs = 2 MACs" view. Attention matmuls are counted (``mscsa_lab.analysis.flops``), and any op
that fvcore still cannot count is listed in ``ProfileReport.uncounted_ops``, never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fvcore.nn import parameter_count

from mscsa_lab.analysis.components import component_total, model_components
from mscsa_lab.analysis.tracker import example_input
from mscsa_lab.io.export import ResultTable
from mscsa_lab.analysis.flops import flop_analysis, uncounted_note
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.mscsa_net import MSCSANet
from mscsa_lab.models.config import ConfigError

__all__ = ["ComponentCost", "ProfileReport", "profile_model", "CONVENTIONS", "convention_factor"]

CONVENTIONS = {
    "mac": "1 multiply-add = 1 FLOP (the paper's and fvcore's convention)",
    "2x": "FLOPs = 2 x multiply-adds",
}


def convention_factor(convention: str) -> int:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown FLOPs convention {convention!r}: choose one of {list(CONVENTIONS)}")
    return 2 if convention == "2x" else 1


@dataclass
class ComponentCost:
    name: str
    group: str
    level: int
    flops: int  # multiply-adds
    params: int


@dataclass
class ProfileReport:
    model: str
    input_size: tuple[int, int]
    batch: int
    task: str
    rows: list[ComponentCost]
    total_flops: int  # multiply-adds, whole model
    total_params: int
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. where the counts come from, when not from this request

    def row(self, name: str) -> ComponentCost:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no component named {name!r}; components: {[r.name for r in self.rows]}")

    def group_flops(self, group: str) -> int:
        """Total multiply-adds of the level-0 rows in ``group`` (e.g. all CSA layers)."""
        return sum(r.flops for r in self.rows if r.level == 0 and r.group == group)

    def to_frame(self, convention: str = "mac") -> pd.DataFrame:
        factor = convention_factor(convention)
        return pd.DataFrame(
            [
                {
                    "Component": row.name,
                    "Level": row.level,
                    "Group": row.group,
                    "FLOPs (G)": row.flops * factor / 1e9,
                    "FLOPs share (%)": 100.0 * row.flops / self.total_flops if self.total_flops else 0.0,
                    "Params (M)": row.params / 1e6,
                    "Params share (%)": 100.0 * row.params / self.total_params if self.total_params else 0.0,
                }
                for row in self.rows
            ]
            + [
                {
                    "Component": "total",
                    "Level": 0,
                    "Group": "total",
                    "FLOPs (G)": self.total_flops * factor / 1e9,
                    "FLOPs share (%)": 100.0,
                    "Params (M)": self.total_params / 1e6,
                    "Params share (%)": 100.0,
                }
            ]
        )

    def to_table(self, convention: str = "mac") -> ResultTable:
        notes = [f"FLOPs convention: {CONVENTIONS[convention]}.", uncounted_note(self.uncounted_ops), *self.notes]
        return ResultTable(
            title=f"Per-component FLOPs and parameters: {self.model}",
            frame=self.to_frame(convention),
            metadata={**self.metadata, "flops_convention": convention},
            notes=notes,
            paper_columns=["Component", "FLOPs (G)", "FLOPs share (%)", "Params (M)"],
        )


def profile_model(
    model: MSCSANet,
    input_size: tuple[int, int] = (224, 224),
    batch: int = 1,
    name: str | None = None,
) -> ProfileReport:
    """Count FLOPs (fvcore + attention handles) and parameters of every component of ``model``."""
    height, width = input_size
    analysis = flop_analysis(model, example_input(model, (height, width), batch))
    flops = dict(analysis.by_module())
    uncounted = dict(analysis.unsupported_ops())
    params = dict(parameter_count(model))
    rows = []
    for component in model_components(model):
        rows.append(ComponentCost(component.name, component.group, component.level,
                                  int(component_total(component, flops)), int(component_total(component, params))))
    level0 = sum(r.flops for r in rows if r.level == 0)
    if flops[""] != level0:  # ops outside every named part, e.g. a residual add counted by a handle
        rows.append(ComponentCost("other (outside named parts)", "other", 0, flops[""] - level0, 0))
    label = name or f"{model.backbone.name} + MSCSA"
    return ProfileReport(
        model=label,
        input_size=(height, width),
        batch=batch,
        task=model.task,
        rows=rows,
        total_flops=flops[""],
        total_params=params[""],
        uncounted_ops=uncounted,
        metadata=run_metadata(model=label, input_size=f"{height}x{width}", batch=batch, task=model.task,
                              mscsa_config=model.config.to_dict(), flops_counted="by fvcore, on this request"),
    )
