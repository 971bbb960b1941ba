"""One forward pass that records every shape the Build tab shows: the backbone's stage map sizes (for the
architecture tables), the multi-stage map, each CSA layer's query and per-scale key grids, and the
model's output (for the diagram). Recorded once, read by ``architecture.architecture_tables`` and
``diagram.diagram_facts``, so a Build request runs the model once, not three times.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mscsa_lab.analysis.tracker import ModuleTracker, example_input, tensors_in

__all__ = ["ModelObservation", "observe_model", "stage_module_path"]


@dataclass
class ModelObservation:
    """Shapes (without the batch dimension) seen in one eval-mode forward pass at ``input_size``."""

    input_size: tuple[int, int]
    stage_sizes: list[tuple[int, int]]  # the four maps MSCSA takes, (h, w) each
    shapes: dict[Any, tuple[int, ...]] = field(default_factory=dict)  # "map", ("query", b, l), ("key", b, l, s)
    output_shapes: tuple[tuple[int, ...], ...] = ()


def stage_module_path(model: nn.Module) -> str:
    """The module whose output is the four stage maps: the backbone wrapper, or TopFormer's token pyramid."""
    return "tpm" if hasattr(model, "tpm") else "backbone"


def observe_model(model: nn.Module, input_size: tuple[int, int]) -> ModelObservation:
    """Run ``model`` once on zeros (eval mode, no gradients, its mode restored) and record the shapes above."""
    keys: dict[str, Any] = {stage_module_path(model): "stages"}
    mscsa = getattr(model, "mscsa", None)
    if mscsa is not None:
        keys["mscsa.aggregation"] = "map"
        for b, block in enumerate(mscsa.blocks):
            for layer, name in enumerate(("attn1", "attn2")):
                attention = getattr(block, name, None)
                if attention is None or not hasattr(attention, "key_proj"):
                    continue  # the fast inference path has no per-scale modules to observe
                keys[f"mscsa.blocks.{b}.{name}.query"] = ("query", b, layer)
                for s in range(len(attention.key_proj)):
                    keys[f"mscsa.blocks.{b}.{name}.key_proj.{s}"] = ("key", b, layer, s)
    shapes: dict[Any, Any] = {}

    def record(path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        found = tensors_in(output)
        key = keys[path]
        shapes[key] = [tuple(t.shape[1:]) for t in found] if key == "stages" else tuple(found[0].shape[1:])

    was_training = model.training
    model.eval()
    try:
        with ModuleTracker(model, keys) as tracker, torch.no_grad():
            tracker.on_leave.append(record)
            output = model(example_input(model, input_size))
    finally:
        model.train(was_training)
    stages = shapes.pop("stages", [])
    return ModelObservation(
        input_size=(int(input_size[0]), int(input_size[1])),
        stage_sizes=[tuple(int(v) for v in shape[-2:]) for shape in stages],
        shapes=shapes,
        output_shapes=tuple(tuple(t.shape[1:]) for t in tensors_in(output)),
    )
