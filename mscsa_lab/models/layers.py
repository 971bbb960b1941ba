"""Small building blocks shared by the MSCSA modules.

Every "linear" projection in MSCSA is a convolution followed by BatchNorm (LeViT style), so the
pair gets its own module: it is what ``fuse()`` folds into a single convolution for inference.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConvBN", "Fusable", "bn_scale_shift", "fold_bn_into_linear", "fuse_modules", "make_activation", "ACTIVATIONS",
           "trunc_normal_many_", "trunc_normal_fan_in_"]

# Activations a user may pick for the FFNs (the paper does not name one; Hardswish is our default).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "hardswish": nn.Hardswish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation by name (case-insensitive)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


@torch.no_grad()
def trunc_normal_many_(tensors: list[torch.Tensor], stds: list[float], bound: float = 2.0) -> None:
    """Fill each tensor with N(0, std**2) truncated at +-``bound`` standard deviations (its own std).

    The values are drawn for all tensors at once: one uniform draw mapped through the inverse normal
    CDF (erfinv, as ``timm.layers.trunc_normal_`` does per tensor), then each tensor takes its slice
    scaled by its std. Three large operations instead of five small ones per tensor: MSCSA has
    hundreds of small convs, and the fixed cost of each small operation, not the arithmetic, used to
    dominate the time it takes to build it."""
    pairs = [(t, std) for t, std in zip(tensors, stds) if t.numel() and t.device.type != "meta"]
    if not pairs:
        return
    first = pairs[0][0]
    draws = torch.empty(sum(t.numel() for t, _ in pairs), device=first.device, dtype=first.dtype)
    edge = math.erf(bound / math.sqrt(2.0))  # uniform in (-edge, edge) -> normal in (-bound, bound)
    _uniform_(draws, -edge, edge).erfinv_().mul_(math.sqrt(2.0))
    offset = 0
    for tensor, std in pairs:
        count = tensor.numel()
        torch.mul(draws[offset:offset + count].view_as(tensor), std, out=tensor)
        offset += count


_CHUNKS = 4  # fixed, so the values depend on the seed only, not on how many threads drew them
_PARALLEL_FROM = 1 << 22


def _uniform_(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``values.uniform_(low, high)``, drawn in ``_CHUNKS`` parts by as many threads when it is large and on
    the CPU: PyTorch's CPU ``uniform_`` runs on one core, and it was a third of building CoaT-S + MSCSA.
    Each part has its own generator, seeded from the default one, so ``torch.manual_seed`` still makes
    a build reproducible."""
    if values.device.type != "cpu" or values.numel() < _PARALLEL_FROM:
        return values.uniform_(low, high)
    from concurrent.futures import ThreadPoolExecutor

    seeds = torch.randint(0, 2**62, (_CHUNKS,)).tolist()
    parts = values.chunk(_CHUNKS)
    with ThreadPoolExecutor(max(1, min(_CHUNKS, torch.get_num_threads()))) as pool:
        list(pool.map(lambda i: parts[i].uniform_(low, high, generator=torch.Generator().manual_seed(seeds[i])),
                      range(len(parts))))
    return values


def trunc_normal_fan_in_(weights: list[torch.Tensor], bound: float = 2.0) -> None:
    """``trunc_normal_many_`` with std 1/sqrt(fan-in) for each conv weight (fan-in: in_channels /
    groups * kernel height * kernel width)."""
    trunc_normal_many_(weights, [(w.numel() // max(w.shape[0], 1)) ** -0.5 for w in weights], bound)


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel in eval mode: the one
    formula every BN fold in this package uses."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class Fusable:
    """Marker for modules whose ``fuse()`` returns an equivalent inference-only module.

    A marker rather than duck typing: timm backbones have their own ``fuse``-like methods with
    other meanings, and ``fuse_modules`` must only touch ours."""

    def fuse(self) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError


class ConvBN(Fusable, nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d; ``fuse()`` returns the equivalent Conv2d."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "conv",
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chs))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv
        scale, shift = bn_scale_shift(self.bn)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(shift)
        return fused


@torch.no_grad()
def fold_bn_into_linear(bn: nn.modules.batchnorm._BatchNorm, linear: nn.Linear) -> nn.Linear:
    """A Linear equal to ``linear(bn(x))`` in eval mode (BN per input feature, before the Linear)."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Linear(
        linear.in_features, linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype
    )
    fused.weight.copy_(linear.weight * scale[None, :])
    fused.bias.copy_(linear.bias + linear.weight @ shift)
    return fused


def fuse_modules(module: nn.Module) -> nn.Module:
    """Replace, in place and recursively, every ``Fusable`` child by what its ``fuse()`` returns.
    Returns the module for chaining. Only valid for inference (eval mode): BN uses running stats."""
    for name, child in module.named_children():
        if isinstance(child, Fusable):
            setattr(module, name, child.fuse())
        else:
            fuse_modules(child)
    return module
