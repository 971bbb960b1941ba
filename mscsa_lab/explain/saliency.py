"""Per-scale saliency of MSCSA's multi-scale key/value embeddings (the paper's Fig. 1b, as a tool).

For one CSA layer (block b, layer 1 or 2) and keys or values, every method returns one map per
scale (X0 full, X1 2x down, X2 3x down), upsampled onto the input image. The methods are classes
in :mod:`mscsa_lab.explain.methods` over one shared pass (:mod:`mscsa_lab.explain.capture`);
:func:`compute_saliency` is the one-call form kept for existing callers.

Each scale's K and V projections are separate modules (``key_proj[i]``, ``value_proj[i]``), so
hook-based tools such as captum see one call per scale (see ``docs/DESIGN.md``, §2 and §8); the
shared pass hooks all six at once.
"""
from __future__ import annotations

import torch

from mscsa_lab.explain.capture import KVTaps, SaliencyError, select_layer
from mscsa_lab.explain.methods import (CLASS_TARGETED, KINDS, METHOD_CLASSES, METHODS, QueryAttention,
                                       SaliencyResult)
from mscsa_lab.explain.targets import TargetLike

__all__ = ["METHODS", "KINDS", "CLASS_TARGETED", "SaliencyError", "SaliencyResult", "KVTaps", "compute_saliency",
           "select_layer"]


def compute_saliency(
    model,
    image: torch.Tensor,
    method: str = "gradcam",
    kind: str = "key",
    block: int = 0,
    layer: int = 1,
    target: TargetLike = None,
    query: tuple[int, int] | None = None,
    class_names=None,
    valid_box: tuple[int, int, int, int] | None = None,
    aligned: bool = False,
) -> SaliencyResult:
    """One map per scale of the chosen CSA layer's keys or values for a 1x3xHxW ``image``.

    ``target``: a class index, a class name (with ``class_names``) or callable(logits) -> score;
    ``valid_box``: (x0, y0, x1, y1) of the picture inside letterbox padding, left out of the maps;
    ``aligned``: draw coarse scales where their convolution centres them (default: the tiled
    layout the maps always had; see :mod:`mscsa_lab.explain.geometry`)."""
    if method not in METHOD_CLASSES:
        raise SaliencyError(f"method={method!r} is unknown: choose one of {list(METHODS)}")
    cls = METHOD_CLASSES[method]
    if cls is QueryAttention:
        explainer = QueryAttention(model, block, layer, kind, class_names, aligned, query=query)
    else:
        explainer = cls(model, block, layer, kind, class_names, aligned)
    return explainer.attribute(image, target, valid_box)
