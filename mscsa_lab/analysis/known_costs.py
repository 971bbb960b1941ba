"""What the Table 7 profiles as shipped cost at batch 1, measured once by ``scripts/make_known_costs.py``.

Three figures per profile, all deterministic (they depend on the architecture and the input size, never on
the weights) and all slow to make on a request:

- its memory cost (``analysis.cost.unit_cost``): PyTorch's Python meta kernels run through the whole
  network, one to two seconds, most of a first Build request;
- its per-component FLOPs and parameters (``analysis.profiler.profile_model``): an fvcore count, whose JIT
  trace takes 0.5-2 s, most of a Profile request (CoaT-S: 1.9 s);
- its backbone's FLOPs and parameters alone (``analysis.compare``'s baseline): with the total of the count
  above, a Compare row without building either model (two profiles: 3.2 s -> 0.15 s).

The profiles at their own settings, 224x224, 1000 classes are the requests made most, so these figures
ship in ``assets/known_costs.json`` with what they depend on: the torch, timm and fvcore versions, and a
fingerprint of this package's code that makes them (the model files, the profiles, the costing and
counting code; ``SOURCES``). A table made by other versions or other code is not used: editing a model
file without running the script again gives slower first requests, never stale figures (and
``tests/test_known_costs.py`` fails until the table is made again). Anything else (changed settings,
another backbone, size, task or number of classes) is measured on the request; a missing or damaged
table only means measuring on the request.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
from pathlib import Path
from typing import Any

from mscsa_lab.analysis.cost import UnitCost
from mscsa_lab.paths import ASSETS_DIR, PROFILES_DIR

__all__ = ["TABLE_FILE", "SOURCES", "SIZE", "cost_key", "known_unit_cost", "known_profile_report", "known_pair",
           "versions", "source_fingerprint", "measure", "differences", "source_note"]

TABLE_FILE = ASSETS_DIR / "known_costs.json"
_MAX_BYTES = 4 << 20
SIZE = (224, 224)  # the size the table holds (with 1000 classes, the profiles' own task)


def source_note(what: str) -> str:
    """The note under a result whose ``what`` (e.g. "FLOPs and parameters of resnet18 as shipped at 224x224")
    comes from the table rather than from this request."""
    return (f"{what}: counted by fvcore, with these torch, timm and fvcore versions and this code, when the table "
            "was made (scripts/make_known_costs.py)")


_PACKAGE = Path(__file__).resolve().parent.parent
# This package's code that the figures depend on, relative to the package (folders: every .py in them).
SOURCES = ("models", "registry.py", "presets.py", "analysis/cost.py", "analysis/components.py", "analysis/flops.py",
           "analysis/profiler.py", "analysis/tracker.py", "analysis/compare.py")


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """SHA-256 of ``SOURCES`` and the profile files, by relative path (line endings ignored): any edit of the
    code that makes the figures, or of a profile, changes it."""
    files = [(f"profiles/{path.name}", path) for path in sorted(PROFILES_DIR.glob("*.toml"))]
    for name in SOURCES:
        path = _PACKAGE / name
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        files += [(f"mscsa_lab/{p.relative_to(_PACKAGE).as_posix()}", p) for p in found]
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """What the figures depend on: torch's major.minor (its meta kernels and its tracer), timm's exact version
    (its modules), fvcore's (its counting rules) and this package's code (``source_fingerprint``)."""
    from importlib import metadata

    import timm
    import torch

    return {"torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]), "timm": timm.__version__,
            "fvcore": metadata.version("fvcore"), "code": source_fingerprint()}


def cost_key(profile: str, task: str, input_size: tuple[int, int], num_classes: int, training: bool) -> str:
    return f"{profile}|{task}|{input_size[0]}x{input_size[1]}|{num_classes}|{'training' if training else 'inference'}"


def measure(profile: str) -> dict[str, dict[str, Any]]:
    """The table's entries of ``profile`` measured now, exactly as a request measures them: its memory cost on
    the meta device for inference and for a training step (``analysis.cost.unit_cost``), its fvcore count
    (``analysis.profiler.profile_model`` on the built model) and its backbone's alone (the Compare action's
    baseline). {"costs": {key: entry}, "counts": {key: entry}, "baselines": {key: entry}}."""
    from mscsa_lab.analysis.cost import unit_cost
    from mscsa_lab.analysis.profiler import profile_model
    from mscsa_lab.workflows.spec import ModelSpec

    spec = ModelSpec.resolve(profile, input_size=SIZE)
    costs = {}
    for training in (False, True):
        unit = unit_cost(spec.meta(), label=spec.label, input_size=spec.input_size, training=training)
        costs[cost_key(profile, spec.task, spec.input_size, spec.num_classes, training)] = \
            {name: getattr(unit, name) for name in _MEASURED}
    model = spec.build()
    report = profile_model(model, spec.input_size)
    key = cost_key(profile, spec.task, spec.input_size, spec.num_classes, False)
    count = {"rows": [[r.name, r.group, r.level, r.flops, r.params] for r in report.rows],
             "total_flops": report.total_flops, "total_params": report.total_params,
             "uncounted_ops": dict(report.uncounted_ops), "mscsa_config": report.metadata.get("mscsa_config")}
    return {"costs": costs, "counts": {key: count}, "baselines": {key: _measure_baseline(profile, model)}}


def _measure_baseline(profile: str, model: Any) -> dict[str, Any]:
    """The backbone alone, as the Compare action builds and counts it (``analysis.compare.measure_pair``)."""
    import torch

    from mscsa_lab.analysis.compare import build_baseline, count_flops_and_uncounted

    base = build_baseline(profile, SIZE, "classification")
    flops, uncounted = count_flops_and_uncounted(base, torch.zeros(1, 3, *SIZE))
    return {"flops": flops, "params": sum(p.numel() for p in base.parameters()), "uncounted_ops": uncounted,
            "backbone": getattr(model, "backbone_name", None) or model.backbone.name}


def known_pair(name: str, input_size: tuple[int, int], task: str) -> Any:
    """The shipped ``analysis.compare.ModelPair`` of a Table 7 profile as shipped (no settings) at the table's
    size, classification, counted with these versions and this code; else None (the caller counts)."""
    from mscsa_lab.analysis.compare import ModelPair, paper_figures
    from mscsa_lab.presets import ProfileError, load_profile, profile_names

    if task != "classification" or tuple(input_size) != SIZE or name not in profile_names():
        return None
    try:
        profile = load_profile(name)
    except ProfileError:
        return None
    key = cost_key(profile.name, task, SIZE, 1000, False)
    count, base = _table()["counts"].get(key), _table()["baselines"].get(key)
    if not isinstance(count, dict) or not isinstance(base, dict):
        return None
    try:
        uncounted = {str(op): int(n) for op, n in dict(base["uncounted_ops"]).items()}
        for op, n in dict(count["uncounted_ops"]).items():
            uncounted[str(op)] = max(uncounted.get(str(op), 0), int(n))
        return ModelPair(name=profile.title, backbone=str(base["backbone"]), flops=int(base["flops"]),
                         flops_mscsa=int(count["total_flops"]), params=int(base["params"]),
                         params_mscsa=int(count["total_params"]), uncounted_ops=uncounted,
                         paper=paper_figures(profile, task, SIZE), input_size=SIZE, task=task, from_table=True)
    except (KeyError, TypeError, ValueError):
        return None


def differences(profiles: list[str]) -> list[str]:
    """What the shipped table says about ``profiles`` that a fresh ``measure`` does not (empty: it is right),
    one line per entry: missing, or which fields differ. A table of other versions or code is all missing."""
    import json

    lines = []
    for profile in profiles:
        for section, entries in measure(profile).items():
            for key, fresh in entries.items():
                shipped = _table()[section].get(key)
                fresh = json.loads(json.dumps(fresh))  # as the table holds it: tuples become lists
                if shipped is None:
                    lines.append(f"{section} {key}: missing")
                elif shipped != fresh:
                    fields = sorted(k for k in set(shipped) | set(fresh) if shipped.get(k) != fresh.get(k))
                    lines.append(f"{section} {key}: {', '.join(fields)} differ")
    return lines


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Any]]:
    """{"costs": {key: entry}, "counts": {key: entry}, "baselines": {key: entry}} of these versions and this
    code, or empty sections."""
    from mscsa_lab.io.guarded import read_json

    empty: dict[str, dict[str, Any]] = {"costs": {}, "counts": {}, "baselines": {}}
    if not TABLE_FILE.is_file():
        return empty
    try:
        data = read_json(TABLE_FILE, _MAX_BYTES)
        if not isinstance(data, dict) or data.get("versions") != versions():
            return empty
        return {section: data[section] if isinstance(data.get(section), dict) else {} for section in empty}
    except Exception as error:  # noqa: BLE001 - a damaged table is only a slower first request
        warnings.warn(f"{TABLE_FILE} is not readable ({error}); costs are computed instead", stacklevel=2)
        return empty


def _shipped_key(spec: Any, training: bool) -> str | None:
    """The table key of ``spec`` (a ``workflows.ModelSpec``) when it is a Table 7 profile as shipped: its own
    backbone and settings, no backbone arguments. Whether the table holds that key is the caller's lookup."""
    if spec.profile is None or spec.backbone_kwargs or spec.modified:
        return None
    from mscsa_lab.presets import load_profile

    if spec.backbone != load_profile(spec.profile).backbone:
        return None
    return cost_key(spec.profile, spec.task, spec.input_size, spec.num_classes, training)


def known_unit_cost(spec: Any, training: bool) -> UnitCost | None:
    """The shipped ``UnitCost`` of ``spec`` when it is a profile as shipped at a size, task and class count
    the table holds, measured by these versions; else None."""
    key = _shipped_key(spec, training)
    entry = _table()["costs"].get(key) if key else None
    if not isinstance(entry, dict):
        return None
    try:
        return UnitCost(label=spec.label, input_size=tuple(spec.input_size), training=bool(training),
                        **{name: (int if name in _COUNTS else float)(entry[name]) for name in _MEASURED})
    except (KeyError, TypeError, ValueError):
        return None


def known_profile_report(spec: Any, name: str | None = None) -> Any:
    """The shipped per-component FLOPs and parameters of ``spec`` (a ``profiler.ProfileReport`` at batch 1,
    called ``name``) when it is a profile as shipped that the table holds, counted with these versions;
    else None (the caller counts)."""
    from mscsa_lab.analysis.profiler import ComponentCost, ProfileReport
    from mscsa_lab.io.metadata import run_metadata

    key = _shipped_key(spec, False)
    entry = _table()["counts"].get(key) if key else None
    if not isinstance(entry, dict):
        return None
    try:
        rows = [ComponentCost(str(n), str(g), int(level), int(flops), int(params))
                for n, g, level, flops, params in entry["rows"]]
        uncounted = {str(op): int(count) for op, count in dict(entry["uncounted_ops"]).items()}
        total_flops, total_params = int(entry["total_flops"]), int(entry["total_params"])
        config = dict(entry["mscsa_config"])
    except (KeyError, TypeError, ValueError):
        return None
    height, width = spec.input_size
    label = name or f"{spec.label} + MSCSA"
    size = f"{height}x{width}"
    source = (source_note(f"FLOPs and parameters of {spec.profile} as shipped at {size}")
              + ". Change a setting, the size, the task or the classes and they are counted on your request.")
    return ProfileReport(
        model=label, input_size=(height, width), batch=1, task=spec.task, rows=rows, total_flops=total_flops,
        total_params=total_params, uncounted_ops=uncounted, notes=[source],
        metadata=run_metadata(model=label, input_size=size, batch=1, task=spec.task, mscsa_config=config,
                              flops_counted=source))


_MEASURED = [field.name for field in dataclasses.fields(UnitCost)
             if field.name not in ("label", "input_size", "training")]
_COUNTS = {"params", "param_bytes", "buffer_bytes"}
