"""Saliency methods as small classes over the shared pass (captum's manner: build once, then
``attribute(image, target)``), each giving one map per key/value scale of a CSA layer.

- :class:`GradXActivation` (``gradxact``): gradient x activation summed over channels, positive
  part (HiResCAM); class-targeted, and it keeps where the class evidence is;
- :class:`GradCAM` (``gradcam``): channel weights from the spatially averaged gradient, ReLU;
- :class:`ActivationNorm` (``norm``): the L2 norm over channels (class-free);
- :class:`EigenCAM` (``eigencam``): the first principal component, signed to agree with the norm;
- :class:`AttentionReceived` (``attention``): softmax attention all queries give each key position;
- :class:`QueryAttention` (``query``): the attention of one query position over each scale.

``attribute`` runs its own pass; :func:`attribute_all` runs one pass (one forward, one backward)
for any set of methods and both keys and values, which is what the app and the command use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch

from mscsa_lab.explain.capture import LayerCapture, SaliencyError, capture_layer
from mscsa_lab.explain.geometry import ScaleGeometry
from mscsa_lab.explain.targets import TargetLike

__all__ = ["SaliencyResult", "SaliencyMethod", "GradXActivation", "GradCAM", "ActivationNorm", "EigenCAM",
           "AttentionReceived", "QueryAttention", "METHOD_CLASSES", "METHODS", "KINDS", "CLASS_TARGETED",
           "attribute_all", "min_max"]

KINDS = ("key", "value")


def min_max(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] over its finite values (NaN stays NaN; a flat map becomes zeros)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.max() <= finite.min():
        return np.where(np.isfinite(values), 0.0, np.nan).astype(np.float32)
    return ((values - finite.min()) / (finite.max() - finite.min())).astype(np.float32)


@dataclass
class SaliencyResult:
    method: str
    kind: str  # key / value (attention methods: "attention")
    block: int
    layer: int
    maps: list[np.ndarray]  # per scale, H x W of the input, float32 (NaN on letterbox padding)
    grid_maps: list[np.ndarray]  # per scale at its own token grid
    head_maps: list[np.ndarray] | None = None  # per scale, heads x H x W (attention / norm methods)
    mass_shares: np.ndarray | None = None  # heads x scales, rows sum to 1 (attention)
    target: int | None = None
    probabilities: np.ndarray | None = None  # softmax over classes of the model's prediction
    query: tuple[int, int] | None = None  # (row, col) on the MSCSA grid for the "query" method
    scale_names: list[str] = field(default_factory=list)
    target_label: str | None = None  # the class name, or the custom score's name
    valid_box: tuple[int, int, int, int] | None = None  # the picture inside the letterbox padding
    grid_valid: list[np.ndarray] | None = None  # per scale: cells that lie on the picture
    geometry: list[ScaleGeometry] | None = None  # per scale: where its cells lie on the input

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Everything numeric, keyed for ``np.savez``."""
        arrays: dict[str, np.ndarray] = {}
        for index, (full, grid) in enumerate(zip(self.maps, self.grid_maps)):
            arrays[f"scale{index}_map"] = full
            arrays[f"scale{index}_grid"] = grid
            if self.head_maps is not None:
                arrays[f"scale{index}_heads"] = self.head_maps[index]
            if self.grid_valid is not None:
                arrays[f"scale{index}_valid"] = self.grid_valid[index]
        if self.mass_shares is not None:
            arrays["mass_shares"] = self.mass_shares
        if self.probabilities is not None:
            arrays["probabilities"] = self.probabilities
        if self.valid_box is not None:
            arrays["valid_box"] = np.asarray(self.valid_box)
        return arrays

    def geometries(self) -> list[ScaleGeometry]:
        if self.geometry is not None:
            return self.geometry
        size = self.maps[0].shape
        return [ScaleGeometry(tuple(g.shape), size) for g in self.grid_maps]

    def valid(self, scale: int) -> np.ndarray:
        return self.grid_valid[scale] if self.grid_valid is not None else np.ones(self.grid_maps[scale].shape, bool)

    def combined_map(self) -> np.ndarray:
        """All scales at once: the mean of each full-size map scaled to [0, 1]."""
        return np.mean([min_max(m) for m in self.maps], axis=0).astype(np.float32)

    def combined_grid(self) -> np.ndarray:
        """All scales on the finest grid: each scale's valid cells scaled to [0, 1], resampled onto
        X0's cells in this result's layout, and averaged."""
        size = tuple(self.grid_maps[0].shape)
        layers = []
        for index, (grid, layout) in enumerate(zip(self.grid_maps, self.geometries())):
            scaled = np.nan_to_num(min_max(np.where(self.valid(index), grid, np.nan)), nan=0.0)
            onto_x0 = ScaleGeometry(layout.grid_size, size, size if layout.base_size else None, layout.stride)
            layers.append(onto_x0.upsample(torch.from_numpy(scaled)))
        return np.mean(layers, axis=0).astype(np.float32)


def _per_head(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """C x h x w -> heads x (C/heads) x h x w."""
    return tensor.reshape(heads, tensor.shape[0] // heads, *tensor.shape[-2:])


def _eigen_map(activation: torch.Tensor) -> torch.Tensor:
    """First principal component of a C x h x w activation, signed to agree with its norm."""
    channels, height, width = activation.shape
    matrix = activation.reshape(channels, -1).T.double()  # tokens x channels
    centred = matrix - matrix.mean(0, keepdim=True)
    if height * width == 1:
        return torch.ones(1, 1, dtype=activation.dtype)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ vh[0]
    norm = matrix.norm(dim=1)
    if torch.dot(projection - projection.mean(), norm - norm.mean()) < 0:
        projection = -projection
    return projection.reshape(height, width).to(activation.dtype)


class SaliencyMethod:
    """One map per scale of one CSA layer's keys or values (or its attention, for the attention views)."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    attention_view: ClassVar[bool] = False

    def __init__(self, model, block: int = 0, layer: int = 1, kind: str = "key",
                 class_names: Sequence[str] | None = None, aligned: bool = True) -> None:
        if kind not in KINDS and not self.attention_view:
            raise SaliencyError(f"kind={kind!r} is unknown: choose 'key' or 'value'")
        if self.needs_gradients and getattr(model, "task", "classification") != "classification":
            raise SaliencyError(f"{self.name} needs a class score: build the model for classification (this one is dense)")
        self.model, self.block, self.layer = model, block, layer
        self.kind = "attention" if self.attention_view else kind
        self.class_names = class_names
        self.aligned = aligned

    def attribute(self, image: torch.Tensor, target: TargetLike = None,
                  valid_box: tuple[int, int, int, int] | None = None) -> SaliencyResult:
        """Maps for a 1x3xHxW ``image``; ``target``: class index, class name or callable(logits) -> score
        (default: the top-1 class); ``valid_box``: the picture inside letterbox padding, left out of the maps."""
        capture = capture_layer(self.model, image, self.block, self.layer, target, self.class_names,
                                self.needs_gradients, valid_box)
        return self.from_capture(capture)

    def from_capture(self, capture: LayerCapture) -> SaliencyResult:
        """The maps from a pass already run (see :func:`attribute_all`)."""
        grids, head_grids = self.grids(capture)
        size, box = capture.input_size, capture.valid_box
        base = capture.scale_sizes[0] if self.aligned else None
        layout = [ScaleGeometry(s, size, base, stride if self.aligned else 1)
                  for s, stride in zip(capture.scale_sizes, capture.scale_strides)]
        valid = [g.valid(box) for g in layout]
        target = capture.target
        return SaliencyResult(
            method=self.name, kind=self.kind, block=capture.block, layer=capture.layer,
            maps=[g.upsample(m, v if box else None, box) for g, m, v in zip(layout, grids, valid)],
            grid_maps=[g.detach().cpu().numpy().astype(np.float32) for g in grids],
            head_maps=None if head_grids is None else
            [g.upsample(m, v if box else None, box) for g, m, v in zip(layout, head_grids, valid)],
            mass_shares=capture.mass_shares() if self.attention_view else None,
            target=None if target is None else target.index,
            probabilities=capture.probabilities,
            query=self.query_cell(capture),
            scale_names=[f"X{i} ({h}x{w})" for i, (h, w) in enumerate(capture.scale_sizes)],
            target_label=None if target is None else target.label,
            valid_box=box,
            grid_valid=valid if box else None,
            geometry=layout,
        )

    def grids(self, capture: LayerCapture) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        raise NotImplementedError

    def query_cell(self, capture: LayerCapture) -> tuple[int, int] | None:
        """The query position the maps are for (only the query view has one)."""
        return None


class GradXActivation(SaliencyMethod):
    name = "gradxact"
    needs_gradients = True

    def grids(self, capture):
        products = [g * a for g, a in zip(capture.gradients(self.kind), capture.activations(self.kind))]
        return ([p.sum(0).clamp(min=0) for p in products],
                [_per_head(p, capture.num_heads).sum(1).clamp(min=0) for p in products])


class GradCAM(SaliencyMethod):
    name = "gradcam"
    needs_gradients = True

    def grids(self, capture):
        pairs = zip(capture.gradients(self.kind), capture.activations(self.kind))
        return [(g.mean(dim=(1, 2), keepdim=True) * a).sum(0).relu() for g, a in pairs], None


class ActivationNorm(SaliencyMethod):
    name = "norm"

    def grids(self, capture):
        tapped = capture.activations(self.kind)
        return [t.norm(dim=0) for t in tapped], [_per_head(t, capture.num_heads).norm(dim=1) for t in tapped]


class EigenCAM(SaliencyMethod):
    name = "eigencam"

    def grids(self, capture):
        return [_eigen_map(t) for t in capture.activations(self.kind)], None


def _attention_pieces(capture: LayerCapture) -> list[torch.Tensor]:
    """Per scale: heads x queries x that scale's keys."""
    return list(capture.attention.split([h * w for h, w in capture.scale_sizes], dim=-1))


class AttentionReceived(SaliencyMethod):
    name = "attention"
    attention_view = True

    def grids(self, capture):
        heads = capture.num_heads
        head_grids = [p.mean(1).reshape(heads, *s) for p, s in zip(_attention_pieces(capture), capture.scale_sizes)]
        return [g.mean(0) for g in head_grids], head_grids


class QueryAttention(SaliencyMethod):
    """``query``: (row, col) on the MSCSA grid (X0's); default its centre."""

    name = "query"
    attention_view = True

    def __init__(self, model, block: int = 0, layer: int = 1, kind: str = "key",
                 class_names: Sequence[str] | None = None, aligned: bool = True,
                 query: tuple[int, int] | None = None) -> None:
        super().__init__(model, block, layer, kind, class_names, aligned)
        self.query = query

    def query_cell(self, capture):
        grid_h, grid_w = capture.scale_sizes[0]
        row, col = self.query if self.query is not None else (grid_h // 2, grid_w // 2)
        if not (0 <= row < grid_h and 0 <= col < grid_w):
            raise SaliencyError(f"query position {(row, col)} is outside the {grid_h}x{grid_w} MSCSA grid")
        return int(row), int(col)

    def grids(self, capture):
        row, col = self.query_cell(capture)
        index = row * capture.scale_sizes[0][1] + col
        heads = capture.num_heads
        head_grids = [p[:, index, :].reshape(heads, *s) for p, s in zip(_attention_pieces(capture), capture.scale_sizes)]
        return [g.mean(0) for g in head_grids], head_grids


METHOD_CLASSES: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (GradXActivation, GradCAM, ActivationNorm, EigenCAM, AttentionReceived, QueryAttention)
}
METHODS = tuple(METHOD_CLASSES)
CLASS_TARGETED = tuple(name for name, cls in METHOD_CLASSES.items() if cls.needs_gradients)


def attribute_all(model, image: torch.Tensor, methods: Sequence[str] = METHODS, kinds: Sequence[str] = KINDS,
                  block: int = 0, layer: int = 1, target: TargetLike = None,
                  class_names: Sequence[str] | None = None, valid_box: tuple[int, int, int, int] | None = None,
                  query: tuple[int, int] | None = None, capture: LayerCapture | None = None,
                  aligned: bool = True) -> dict[tuple[str, str], SaliencyResult]:
    """Every requested map from ONE pass: keyed ``(method, kind)``, with kind "attention" for the
    attention views (which have no K/V variant). Gradients are taken only if a method needs them.
    ``aligned``: draw coarse scales where their convolution centres them (see ``geometry``)."""
    unknown = [m for m in methods if m not in METHOD_CLASSES]
    if unknown:
        raise SaliencyError(f"method={unknown[0]!r} is unknown: choose one of {list(METHODS)}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise SaliencyError(f"kind={(bad or [''])[0]!r} is unknown: choose 'key' or 'value'")
    instances: list[SaliencyMethod] = []
    for name in methods:
        cls = METHOD_CLASSES[name]
        if cls.attention_view:
            extra = {"query": query} if cls is QueryAttention else {}
            instances.append(cls(model, block, layer, class_names=class_names, aligned=aligned, **extra))
        else:
            instances.extend(cls(model, block, layer, kind, class_names, aligned) for kind in kinds)
    if capture is None:
        gradients = any(instance.needs_gradients for instance in instances)
        capture = capture_layer(model, image, block, layer, target, class_names, gradients, valid_box)
    return {(instance.name, instance.kind): instance.from_capture(capture) for instance in instances}
