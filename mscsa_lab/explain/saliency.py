"""Per-scale saliency of MSCSA's multi-scale key/value embeddings (the paper's Fig. 1b, as a tool).

For one CSA layer (block b, layer 1 or 2) and keys or values, every method returns one map per
scale (X0 full, X1 2x down, X2 3x down), upsampled onto the input image:

- ``gradcam``: Grad-CAM (captum's ``LayerGradCam``) on that scale's K or V projection, for the
  top-1 class or a chosen one;
- ``gradxact``: gradient x activation summed over channels, positive part (HiResCAM; captum's
  ``LayerGradientXActivation``), class-targeted like Grad-CAM but without averaging the gradients
  over positions first, which keeps where the class evidence is (on the demo model it localises
  objects far better than Grad-CAM on keys: see the closing figures in the README);
- ``norm``: the L2 norm over channels of the scale's K or V (class-free);
- ``eigencam``: the first principal component of the scale's K or V, signed so that it agrees
  with the activation norm (an unsigned component can come out inverted);
- ``attention``: how much softmax attention all queries give to each key position, split by
  scale, with the share of attention mass per scale and head;
- ``query``: the attention map of one query position over each scale.

Each scale's K and V projections are separate modules (``key_proj[i]``, ``value_proj[i]``), so
hook-based tools such as captum see one call per scale (see ``docs/DESIGN.md``, §2 and §8).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mscsa_lab.models.mscsa import CrossScaleAttention
from mscsa_lab.models.mscsa_net import MSCSANet
from mscsa_lab.errors import UserError

__all__ = ["METHODS", "KINDS", "SaliencyError", "SaliencyResult", "KVTaps", "compute_saliency", "select_layer"]

METHODS = ("gradxact", "gradcam", "norm", "eigencam", "attention", "query")
CLASS_TARGETED = ("gradcam", "gradxact")
KINDS = ("key", "value")


class SaliencyError(UserError, ValueError):
    """A saliency request that cannot be served (wrong layer, method, target...)."""


@dataclass
class SaliencyResult:
    method: str
    kind: str  # key / value (attention methods: "attention")
    block: int
    layer: int
    maps: list[np.ndarray]  # per scale, H x W of the input, float32
    grid_maps: list[np.ndarray]  # per scale at its own token grid
    head_maps: list[np.ndarray] | None = None  # per scale, heads x H x W (attention / norm methods)
    mass_shares: np.ndarray | None = None  # heads x scales, rows sum to 1 (attention)
    target: int | None = None
    probabilities: np.ndarray | None = None  # softmax over classes of the model's prediction
    query: tuple[int, int] | None = None  # (row, col) on the MSCSA grid for the "query" method
    scale_names: list[str] = field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Everything numeric, keyed for ``np.savez``."""
        arrays: dict[str, np.ndarray] = {}
        for index, (full, grid) in enumerate(zip(self.maps, self.grid_maps)):
            arrays[f"scale{index}_map"] = full
            arrays[f"scale{index}_grid"] = grid
            if self.head_maps is not None:
                arrays[f"scale{index}_heads"] = self.head_maps[index]
        if self.mass_shares is not None:
            arrays["mass_shares"] = self.mass_shares
        if self.probabilities is not None:
            arrays["probabilities"] = self.probabilities
        return arrays


def select_layer(model: MSCSANet, block: int = 0, layer: int = 1) -> CrossScaleAttention:
    """The CSA layer ``layer`` (1 or 2) of MSCSA block ``block`` (0-based)."""
    blocks = model.mscsa.blocks
    if not isinstance(block, int) or not 0 <= block < len(blocks):
        raise SaliencyError(f"block={block!r} does not exist: this model has blocks 0..{len(blocks) - 1}")
    if layer not in (1, 2):
        raise SaliencyError(f"layer={layer!r}: each MSCSA block has CSA layers 1 and 2")
    found = getattr(blocks[block], f"attn{layer}")
    if not isinstance(found, CrossScaleAttention):
        raise SaliencyError("saliency needs the reference CSA modules, not the fast inference path")
    return found


class KVTaps:
    """Forward hooks that keep each scale's K and V outputs of one CSA layer (without changing them)."""

    def __init__(self, layer: CrossScaleAttention) -> None:
        self.layer = layer
        self.keys: list[torch.Tensor | None] = [None] * layer.num_scales
        self.values: list[torch.Tensor | None] = [None] * layer.num_scales
        self._handles: list[Any] = []

    def __enter__(self) -> "KVTaps":
        for index, (key, value) in enumerate(zip(self.layer.key_proj, self.layer.value_proj)):
            self._handles.append(key.register_forward_hook(self._keep(self.keys, index)))
            self._handles.append(value.register_forward_hook(self._keep(self.values, index)))
        return self

    @staticmethod
    def _keep(store: list, index: int):
        def hook(module, inputs, output):
            store[index] = output.detach()

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextlib.contextmanager
def _stored_attention(layer: CrossScaleAttention) -> Iterator[None]:
    old = layer.store_attention
    layer.store_attention = True
    try:
        yield
    finally:
        layer.store_attention = old


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W) bilinear, as float32 numpy."""
    shape = grid.shape
    flat = grid.reshape(-1, 1, shape[-2], shape[-1]).float()
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return up.reshape(*shape[:-2], *size).cpu().numpy().astype(np.float32)


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


def _per_head(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """C x h x w -> heads x (C/heads) x h x w."""
    channels = tensor.shape[0]
    return tensor.reshape(heads, channels // heads, *tensor.shape[-2:])


def compute_saliency(
    model: MSCSANet,
    image: torch.Tensor,
    method: str = "gradcam",
    kind: str = "key",
    block: int = 0,
    layer: int = 1,
    target: int | None = None,
    query: tuple[int, int] | None = None,
) -> SaliencyResult:
    """One map per scale of the chosen CSA layer's keys or values for a 1x3xHxW ``image``."""
    if method not in METHODS:
        raise SaliencyError(f"method={method!r} is unknown: choose one of {list(METHODS)}")
    if kind not in KINDS and method not in ("attention", "query"):
        raise SaliencyError(f"kind={kind!r} is unknown: choose 'key' or 'value'")
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise SaliencyError(f"give one RGB image as a 1x3xHxW tensor, got shape {tuple(image.shape)}")
    if method in CLASS_TARGETED and model.task != "classification":
        raise SaliencyError(f"{method} needs a class score: build the model for classification (this one is dense)")
    csa = select_layer(model, block, layer)
    model.eval()
    size = tuple(image.shape[-2:])
    heads = csa.num_heads

    with torch.no_grad(), KVTaps(csa) as taps, _stored_attention(csa):
        output = model(image)
    attention = csa.last_attention  # 1 x heads x N x M
    csa.last_attention = None
    probabilities = None
    if model.task == "classification":
        probabilities = output.softmax(-1)[0].cpu().numpy()
        num_classes = probabilities.shape[0]
        if target is None:
            target = int(probabilities.argmax())
        elif not isinstance(target, (int, np.integer)) or not 0 <= int(target) < num_classes:
            raise SaliencyError(f"target class {target!r} does not exist: choose 0..{num_classes - 1}")
        target = int(target)

    scale_sizes = [tuple(k.shape[-2:]) for k in taps.keys]
    grids: list[torch.Tensor] = []
    head_grids: list[torch.Tensor] | None = None
    mass_shares = None
    chosen_query = None
    tapped = taps.keys if kind == "key" else taps.values

    if method == "gradcam":
        from captum.attr import LayerGradCam

        projections = csa.key_proj if kind == "key" else csa.value_proj
        for module in projections:
            cam = LayerGradCam(model, module).attribute(image, target=target, relu_attributions=True)
            grids.append(cam[0, 0].detach())
    elif method == "gradxact":
        from captum.attr import LayerGradientXActivation

        projections = csa.key_proj if kind == "key" else csa.value_proj
        head_grids = []
        for module in projections:
            product = LayerGradientXActivation(model, module).attribute(image, target=target)[0].detach()
            grids.append(product.sum(0).clamp(min=0))
            head_grids.append(_per_head(product, heads).sum(1).clamp(min=0))
    elif method == "norm":
        grids = [t[0].norm(dim=0) for t in tapped]
        head_grids = [_per_head(t[0], heads).norm(dim=1) for t in tapped]
    elif method == "eigencam":
        grids = [_eigen_map(t[0]) for t in tapped]
    else:
        counts = [h * w for h, w in scale_sizes]
        pieces = attention[0].split(counts, dim=-1)  # per scale: heads x N x Mi
        mass_shares = torch.stack([p.sum(-1).mean(-1) for p in pieces], dim=-1).cpu().numpy()  # heads x scales
        if method == "attention":
            head_grids = [p.mean(1).reshape(heads, *s) for p, s in zip(pieces, scale_sizes)]
        else:
            grid_h, grid_w = scale_sizes[0]
            if query is None:
                query = (grid_h // 2, grid_w // 2)
            row, col = query
            if not (0 <= row < grid_h and 0 <= col < grid_w):
                raise SaliencyError(f"query position {query} is outside the {grid_h}x{grid_w} MSCSA grid")
            chosen_query = (int(row), int(col))
            index = row * grid_w + col
            head_grids = [p[:, index, :].reshape(heads, *s) for p, s in zip(pieces, scale_sizes)]
        grids = [g.mean(0) for g in head_grids]

    maps = [_upsample(g, size) for g in grids]
    return SaliencyResult(
        method=method,
        kind=kind if method not in ("attention", "query") else "attention",
        block=block,
        layer=layer,
        maps=maps,
        grid_maps=[g.cpu().numpy().astype(np.float32) for g in grids],
        head_maps=None if head_grids is None else [_upsample(g, size) for g in head_grids],
        mass_shares=mass_shares,
        target=target,
        probabilities=probabilities,
        query=chosen_query,
        scale_names=[f"X{i} ({h}x{w})" for i, (h, w) in enumerate(scale_sizes)],
    )
