"""Small building blocks shared by the MSCSA modules.

Every "linear" projection in MSCSA is a convolution followed by BatchNorm (LeViT style), so the
pair gets its own module: it is what ``fuse()`` folds into a single convolution for inference.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBN", "Fusable", "bn_scale_shift", "fold_bn_into_linear", "fuse_modules", "make_activation", "ACTIVATIONS"]

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
