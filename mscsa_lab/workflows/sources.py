"""Where a model with weights comes from for inference: the bundled demo model, a trained run, or a
spec (random, pretrained backbone, or with a checkpoint loaded). Saliency and explain take any of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mscsa_lab.errors import UserError
from mscsa_lab.workflows.build import weights_note
from mscsa_lab.workflows.limits import ResourceLimits, guard
from mscsa_lab.workflows.spec import ModelSpec
from mscsa_lab.workflows.store import ModelStore, obtain_model

__all__ = ["LoadedModel", "demo_model", "trained_model", "spec_model", "preprocessing_for", "run_spec", "SourceError"]


class SourceError(UserError, ValueError):
    """A model source that cannot serve the request (e.g. a checkpoint for the demo model)."""


@dataclass
class LoadedModel:
    """A model ready for inference (the caller's own copy), what its outputs are called, the input size it
    was made for, how to normalise images for it, and a plain statement of its weights."""

    model: nn.Module
    name: str
    class_names: list[str]
    input_size: tuple[int, int]
    weights: str
    meta: dict[str, Any] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)


def preprocessing_for(model: nn.Module, meta: dict | None = None) -> dict[str, Any]:
    """Mean, std and interpolation for a model's inputs: a trained run's own (from its metadata), else the
    backbone's timm pretrained config (ImageNet defaults when it has none)."""
    if meta is not None and "preprocessing" in meta:
        saved = meta["preprocessing"]
        chosen = dict(mean=tuple(saved["mean"]), std=tuple(saved["std"]))
        if saved.get("interpolation"):
            chosen["interpolation"] = saved["interpolation"]
        return chosen
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(getattr(getattr(model, "backbone", None), "name", ""))
    except Exception:  # noqa: BLE001 - any timm lookup failure means "no config"
        cfg = None
    if cfg is None:
        return {}
    return dict(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation or "bicubic")


def demo_model(store: ModelStore | None = None, shared: bool = False) -> LoadedModel:
    """The bundled demo model (ResNet-10t at half width + MSCSA, trained on the synthetic shapes);
    ``shared``: the store's own model rather than a copy (see ``trained_model``)."""
    import copy

    from mscsa_lab.io.checkpoints import load_demo_model

    model, meta = store.get(("demo",), load_demo_model) if store is not None else load_demo_model()
    accuracy = meta.get("held_out_accuracy")
    note = ("Weights: demo model: 5 synthetic shapes"
            + (f" ({100 * accuracy:.1f}% held-out)" if isinstance(accuracy, (int, float)) else "")
            + "; on real photographs it can only answer with a shape. Train on your own images to explain them.")
    return LoadedModel(copy.deepcopy(model) if store is not None and not shared else model, "demo", list(meta["classes"]),
                       tuple(meta["input_size"]), note, meta, preprocessing_for(model, meta))


def run_spec(meta: dict[str, Any]) -> ModelSpec:
    """The architecture a run's (validated) ``model.json`` describes, as a ``ModelSpec``, so that it is costed
    like any other request before the model is built."""
    profile = meta.get("profile")
    return ModelSpec.resolve(profile or meta["backbone"], backbone=meta["backbone"] if profile else None,
                             task=meta.get("task") or "classification", input_size=tuple(meta["input_size"]),
                             num_classes=int(meta["num_classes"]), settings=dict(meta.get("mscsa") or {}),
                             backbone_kwargs=dict(meta.get("backbone_kwargs") or {}))


def trained_model(folder: str | Path, store: ModelStore | None = None, label: str | None = None,
                  limits: ResourceLimits | None = None, root: str | Path | None = None,
                  shared: bool = False) -> LoadedModel:
    """A training run's folder (``model.safetensors`` + ``model.json``), as ``mscsa-lab train`` writes it:
    its ``model.json`` is checked, its model costed against ``limits``, then built and loaded (files inside
    ``root`` when given, e.g. the app's runs folder). ``shared``: the store's own model, not a copy, for
    work that changes nothing on it (the saliency pass: its hooks act only in their own thread)."""
    import copy

    from mscsa_lab.io.checkpoints import load_trained
    from mscsa_lab.io.run_metadata import read_run_metadata

    folder = Path(folder)
    guard(run_spec(read_run_metadata(folder, root=root)), limits, copies=2 if store is not None else 1)
    weights = folder / "model.safetensors"
    if store is not None:
        stamp = weights.stat().st_mtime if weights.exists() else 0.0
        model, meta = store.get(("trained", str(folder.resolve()), stamp), lambda: load_trained(folder, root=root))
        model = model if shared else copy.deepcopy(model)
    else:
        model, meta = load_trained(folder, root=root)
    top1 = (meta.get("metrics") or {}).get("top1")
    accuracy = f", {top1:.1f}% val top-1" if isinstance(top1, (int, float)) else ""
    note = label or (f"Weights: trained run {folder.name} ({meta.get('backbone', '?')}, "
                     f"{len(meta.get('classes') or [])} classes{accuracy}).")
    return LoadedModel(model, folder.name, list(meta["classes"]), tuple(meta["input_size"]), note, meta,
                       preprocessing_for(model, meta))


def spec_model(spec: ModelSpec, checkpoint: str | Path | None = None, store: ModelStore | None = None,
               limits: ResourceLimits | None = None, shared: bool = False) -> LoadedModel:
    """The model of ``spec`` (classification: saliency needs class scores), with ``checkpoint`` loaded.
    ``shared``: the store's own model rather than a copy (see ``trained_model``)."""
    from mscsa_lab.io.checkpoints import load_checkpoint

    if spec.task != "classification":
        spec = spec.replace(task="classification")
    guard(spec, limits, copies=2 if store is not None else 1)
    if checkpoint:
        model = load_checkpoint(spec.build(), str(checkpoint)).eval()
    else:
        model = store.cached(spec) if shared and store is not None else obtain_model(spec, store)
    names = [f"class {i}" for i in range(getattr(model, "num_classes", 0))]
    return LoadedModel(model, spec.label, names, spec.input_size,
                       weights_note(spec, Path(checkpoint).name if checkpoint else None), None,
                       preprocessing_for(model))
