"""fvcore FLOP counting with the attention ops fvcore leaves out.

The paper counts one multiply-add as one FLOP (fvcore's convention) and counts attention matmuls.
fvcore has no handle for ``aten::scaled_dot_product_attention`` (timm's attention and our CSA use
it) and silently drops it; the handles here count its two matmuls, QK^T and AV.
"""
from __future__ import annotations

from math import prod
from typing import Any, Sequence

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

__all__ = ["sdpa_flop_jit", "ATTENTION_OPS", "flop_analysis", "count_flops", "uncounted_note"]

# Fused attention ops as they appear in a TorchScript trace; all take (query, key, value, ...).
ATTENTION_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)

# Ops that cost nothing worth counting (shape changes, comparisons) and that fvcore would
# otherwise report as unsupported; anything not here or handled stays visible as uncounted.
_FREE_OPS = (
    "aten::clone",
    "aten::copy_",
    "aten::detach",
    "aten::fill_",
    "aten::zero_",
    "aten::ones_like",
    "aten::zeros_like",
    "aten::contiguous",
    "aten::pad",
    "aten::constant_pad_nd",
    "aten::roll",
    "aten::index",
    "aten::index_put_",
    "aten::slice_scatter",
    "aten::unbind",
    "aten::unflatten",
)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of softmax(Q K^T) V: batch * L * S * (E + Ev); softmax and scaling not counted
    (fvcore does not count elementwise ops either)."""
    query_shape = get_shape(inputs[0])
    key_shape = get_shape(inputs[1])
    value_shape = get_shape(inputs[2])
    *batch, length, embed = query_shape
    source_length = key_shape[-2]
    value_embed = value_shape[-1]
    return prod(batch) * length * source_length * (embed + value_embed)


def flop_analysis(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]) -> FlopCountAnalysis:
    """An fvcore ``FlopCountAnalysis`` with the attention handles registered and free ops ignored,
    already traced in eval mode without autograd (inference FLOPs: dropout and drop path off, BN
    with running statistics); the model's training mode is restored afterwards.

    Warnings about uncounted ops are left to the caller (``unsupported_ops()``), never hidden.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**{op: sdpa_flop_jit for op in ATTENTION_OPS})
    analysis.set_op_handle(**{op: None for op in _FREE_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis.total()  # fvcore traces lazily, on the first query: trace now, in eval mode
    finally:
        model.train(was_training)
    return analysis


def count_flops(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, int]:
    """FLOPs (multiply-adds) by module name, "" for the whole model; eval mode, no grad."""
    return dict(flop_analysis(model, inputs).by_module())


def uncounted_note(uncounted_ops: dict[str, int]) -> str:
    """The line printed under every table: which operators fvcore did not count, if any."""
    if not uncounted_ops:
        return "Every operator was counted (shape-only ops cost nothing)."
    listed = ", ".join(f"{op} (x{count})" for op, count in sorted(uncounted_ops.items()))
    return f"Operators fvcore does not count (elementwise ops are left out by its convention): {listed}."
