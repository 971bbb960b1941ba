"""Batch-1 costs of the Table 7 profiles as shipped, measured once by ``scripts/make_unit_costs.py``.

Costing a model on the meta device runs PyTorch's Python meta kernels through the whole network: one to
two seconds for a Table 7 model, most of a first Build request. The profiles at their own settings and
sizes are the requests made most, and their costs do not change between runs, so they ship in
``assets/unit_costs.json`` with the torch and timm versions that measured them. Anything else (changed
settings, another backbone, size, task or number of classes, other versions) is costed as before; a
missing or damaged table only means costing as before.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

from mscsa_lab.analysis.cost import UnitCost
from mscsa_lab.paths import ASSETS_DIR

__all__ = ["TABLE_FILE", "cost_key", "known_unit_cost", "versions", "table_entry"]

TABLE_FILE = ASSETS_DIR / "unit_costs.json"
_MAX_BYTES = 1 << 20


def versions() -> dict[str, str]:
    """What the figures depend on: torch's major.minor (its meta kernels) and timm's exact version (its modules)."""
    import timm
    import torch

    return {"torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]), "timm": timm.__version__}


def cost_key(profile: str, task: str, input_size: tuple[int, int], num_classes: int, training: bool) -> str:
    return f"{profile}|{task}|{input_size[0]}x{input_size[1]}|{num_classes}|{'training' if training else 'inference'}"


def table_entry(unit: UnitCost) -> dict[str, Any]:
    return {name: getattr(unit, name) for name in _MEASURED}


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Any]]:
    from mscsa_lab.io.guarded import read_json

    if not TABLE_FILE.is_file():
        return {}
    try:
        data = read_json(TABLE_FILE, _MAX_BYTES)
        if not isinstance(data, dict) or data.get("versions") != versions():
            return {}
        entries = data.get("costs")
        return entries if isinstance(entries, dict) else {}
    except Exception as error:  # noqa: BLE001 - a damaged table is only a slower first request
        warnings.warn(f"{TABLE_FILE} is not readable ({error}); costs are computed instead", stacklevel=2)
        return {}


def known_unit_cost(spec: Any, training: bool) -> UnitCost | None:
    """The shipped ``UnitCost`` of ``spec`` (a ``workflows.ModelSpec``) when it is a Table 7 profile as
    shipped (its own backbone and settings, no backbone arguments) at a size, task and class count the
    table holds, measured by this torch and timm; else None."""
    if spec.profile is None or spec.backbone_kwargs or spec.modified:
        return None
    from mscsa_lab.presets import load_profile

    if spec.backbone != load_profile(spec.profile).backbone:
        return None
    entry = _table().get(cost_key(spec.profile, spec.task, spec.input_size, spec.num_classes, training))
    if not isinstance(entry, dict):
        return None
    try:
        return UnitCost(label=spec.label, input_size=tuple(spec.input_size), training=bool(training),
                        **{name: (int if name in _COUNTS else float)(entry[name]) for name in _MEASURED})
    except (KeyError, TypeError, ValueError):
        return None


_MEASURED = [field.name for field in dataclasses.fields(UnitCost)
             if field.name not in ("label", "input_size", "training")]
_COUNTS = {"params", "param_bytes", "buffer_bytes"}
