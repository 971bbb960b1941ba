"""Gradient checkpointing of the MSCSA blocks (``MSCSANet.set_grad_checkpointing``).

Recomputing a block in backward runs its forward a second time: drop path must draw the same numbers
(``torch.utils.checkpoint`` preserves the RNG state) and BatchNorm must not update its running
statistics twice, which ``_batchnorm_stats_frozen`` prevents during the recomputation.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointedBlocks"]


@contextlib.contextmanager
def _batchnorm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BN layers of ``module`` that leave their running statistics unchanged: a checkpointed
    block's recomputation in backward must not update them a second time."""
    layers = [m for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistic
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _checkpointed_call(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` whose activations are recomputed in backward (BN statistics updated once)."""
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _batchnorm_stats_frozen(block)))


class CheckpointedBlocks(nn.Sequential):
    """The MSCSA blocks (same children and state_dict keys as ``nn.Sequential``); with
    ``grad_checkpointing`` each block's activations are recomputed in backward instead of stored.
    Drop path draws the same numbers again (RNG state preserved) and BN statistics update once."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = _checkpointed_call(block, x)
            else:
                x = block(x)
        return x
