"""The one pass every saliency method shares: a forward with hooks on every scale's key and value
projection of one CSA layer, and, for the gradient methods, one backward for all of them at once.

Hook-based tools run a forward and a backward per layer they explain (captum's layer methods once
per call, so per scale and per K/V); here a single ``torch.autograd.grad`` of the target score
returns the gradients of all six tapped activations (three scales, keys and values), and the
backward stops there instead of running on through the backbone. The attention weights are
recomputed from the tapped queries and keys of the same forward (the explicit form of the layer's
attention), so the attention views cost one small matrix product more.

Nothing on the model is changed: the hooks are removed on exit and act only in the thread that
placed them, so a model shared between threads is never fed another request's tensors.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mscsa_lab.explain.geometry import SCALE_STRIDES
from mscsa_lab.explain.targets import ResolvedTarget, SaliencyError, TargetLike, resolve_target
from mscsa_lab.models.mscsa import CrossScaleAttention

__all__ = ["SaliencyError", "select_layer", "KVTaps", "LayerCapture", "capture_layer", "check_image",
           "attention_weights"]


def select_layer(model, block: int = 0, layer: int = 1) -> CrossScaleAttention:
    """The CSA layer ``layer`` (1 or 2) of MSCSA block ``block`` (0-based)."""
    blocks = model.mscsa.blocks
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < len(blocks):
        raise SaliencyError(f"block={block!r} does not exist: this model has blocks 0..{len(blocks) - 1}")
    if layer not in (1, 2):
        raise SaliencyError(f"layer={layer!r}: each MSCSA block has CSA layers 1 and 2")
    found = getattr(blocks[block], f"attn{layer}")
    if not isinstance(found, CrossScaleAttention):
        raise SaliencyError("saliency needs the reference CSA modules, not the fast inference path")
    return found


def check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise SaliencyError(f"give one RGB image as a 1x3xHxW tensor, got {shape}")


class KVTaps:
    """Forward hooks that keep each scale's K and V outputs of one CSA layer. With ``for_gradients``
    the outputs are handed on as fresh leaves that require grad, so that the gradient of any later
    score with respect to them can be taken in one call (their values are unchanged)."""

    def __init__(self, layer: CrossScaleAttention, for_gradients: bool = False) -> None:
        self.layer = layer
        self.for_gradients = for_gradients
        self.keys: list[torch.Tensor | None] = [None] * layer.num_scales
        self.values: list[torch.Tensor | None] = [None] * layer.num_scales
        self.queries: list[torch.Tensor | None] = [None]
        self._handles: list[Any] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> "KVTaps":
        self._thread = threading.get_ident()
        for index, (key, value) in enumerate(zip(self.layer.key_proj, self.layer.value_proj)):
            self._handles.append(key.register_forward_hook(self._keep(self.keys, index)))
            self._handles.append(value.register_forward_hook(self._keep(self.values, index)))
        self._handles.append(self.layer.query.register_forward_hook(self._keep(self.queries, 0, gradients=False)))
        return self

    def _keep(self, store: list, index: int, gradients: bool = True):
        def hook(module, inputs, output):
            if threading.get_ident() != self._thread:
                return None
            if self.for_gradients and gradients:
                output = output.detach().requires_grad_(True)
                store[index] = output
                return output
            store[index] = output.detach()
            return None

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def attention_weights(layer: CrossScaleAttention, query: torch.Tensor, keys: Sequence[torch.Tensor]) -> torch.Tensor:
    """softmax(Q [K0; K1; K2]^T / sqrt(d)), batch x heads x queries x keys, as the layer's explicit path computes it."""
    batch, heads = query.shape[0], layer.num_heads
    q = query.reshape(batch, heads, layer.key_dim, -1).transpose(-2, -1)
    k = torch.cat([key.flatten(2).reshape(batch, heads, layer.key_dim, -1) for key in keys], dim=-1).transpose(-2, -1)
    return ((q * layer.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@dataclass
class LayerCapture:
    """What one pass saw at one CSA layer, for one image (batch dimension dropped)."""

    block: int
    layer: int
    num_heads: int
    input_size: tuple[int, int]
    keys: list[torch.Tensor]  # per scale: channels x h x w
    values: list[torch.Tensor]
    attention: torch.Tensor  # heads x queries x (all scales' keys)
    key_grads: list[torch.Tensor] | None = None  # d score / d K, per scale
    value_grads: list[torch.Tensor] | None = None
    probabilities: np.ndarray | None = None  # softmax over classes (classification models)
    target: ResolvedTarget | None = None
    valid_box: tuple[int, int, int, int] | None = None
    scale_strides: tuple[int, ...] = (1, 2, 3)  # each scale's token stride on X0's grid

    @property
    def scale_sizes(self) -> list[tuple[int, int]]:
        return [tuple(k.shape[-2:]) for k in self.keys]

    def activations(self, kind: str) -> list[torch.Tensor]:
        return self.keys if kind == "key" else self.values

    def gradients(self, kind: str) -> list[torch.Tensor]:
        grads = self.key_grads if kind == "key" else self.value_grads
        if grads is None:
            raise SaliencyError("this pass was run without gradients: capture with gradients=True")
        return grads

    def mass_shares(self) -> np.ndarray:
        """heads x scales: the share of attention all queries give to each scale (rows sum to 1)."""
        pieces = self.attention.split([h * w for h, w in self.scale_sizes], dim=-1)
        return torch.stack([p.sum(-1).mean(-1) for p in pieces], dim=-1).cpu().numpy()


def capture_layer(model, image: torch.Tensor, block: int = 0, layer: int = 1, target: TargetLike = None,
                  class_names: Sequence[str] | None = None, gradients: bool = True,
                  valid_box: tuple[int, int, int, int] | None = None) -> LayerCapture:
    """One forward (and with ``gradients``, one backward) of ``model`` on a 1x3xHxW ``image``.

    Gradients need a classification model (or a callable target); ``target`` as in
    :func:`mscsa_lab.explain.targets.resolve_target`. The model is put in eval mode."""
    check_image(image)
    csa = select_layer(model, block, layer)
    classification = getattr(model, "task", "classification") == "classification"
    if gradients and not classification:
        raise SaliencyError("class-targeted maps need a class score: build the model for classification "
                            "(this one is dense)")
    model.eval()
    with torch.set_grad_enabled(gradients), KVTaps(csa, for_gradients=gradients) as taps:
        output = model(image)
    if taps.queries[0] is None or any(k is None for k in taps.keys):
        raise SaliencyError(f"block {block}, CSA layer {layer} did not run in this model's forward")
    with torch.no_grad():
        attention = attention_weights(csa, taps.queries[0], [k.detach() for k in taps.keys])
    resolved = probabilities = None
    key_grads = value_grads = None
    if classification:
        logits = output.detach()
        probabilities = logits.softmax(-1)[0].cpu().numpy()
        resolved = resolve_target(target, logits, class_names)
        if gradients:
            score = resolved.score(output).sum()
            grads = torch.autograd.grad(score, [*taps.keys, *taps.values], allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [*taps.keys, *taps.values])]
            count = len(taps.keys)
            key_grads = [g[0].detach() for g in grads[:count]]
            value_grads = [g[0].detach() for g in grads[count:]]
    return LayerCapture(
        block=block, layer=layer, num_heads=csa.num_heads, input_size=tuple(image.shape[-2:]),
        keys=[k[0].detach() for k in taps.keys], values=[v[0].detach() for v in taps.values],
        attention=attention[0], key_grads=key_grads, value_grads=value_grads,
        probabilities=probabilities, target=resolved, valid_box=valid_box,
        scale_strides=SCALE_STRIDES.get(csa.downsample, (1, 2, 3))[:csa.num_scales],
    )
