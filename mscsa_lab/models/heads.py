"""What follows MSCSA: the classification head (Fig. 4) and the dense fusion into the backbone maps (Fig. 5).

Both take the multi-stage map X (B x sum Ci' x h x w) that ``mscsa_lab.models.mscsa.MSCSA`` returns.
They are written to script (TorchScript) and to trace (torch.fx) as they are: plain lists, no
iteration over traced values, no control flow on tensor shapes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mscsa_lab.models.config import ConfigError
from mscsa_lab.models.layers import ConvBN, Fusable, fold_bn_into_linear, trunc_normal_many_

__all__ = ["ClassificationHead", "DenseFusion", "resolve_global_pool", "GLOBAL_POOLS"]

GLOBAL_POOLS = ("avg", "")


def resolve_global_pool(global_pool: str | None) -> str:
    """'avg' (global average pooling, Fig. 4) or '' (none; None means the same)."""
    value = "" if global_pool is None else global_pool
    if value not in GLOBAL_POOLS:
        raise ConfigError(
            f"global_pool={global_pool!r} is not supported: MSCSA's head averages the multi-stage map "
            f"('avg', the default) or does no pooling ('' or None: the head then works per position)"
        )
    return value


class ClassificationHead(Fusable, nn.Module):
    """Fig. 4: BN -> global average pool -> Linear. ``fuse()`` folds the BN into the Linear
    (exact in eval mode, since the spatial mean commutes with a per-channel affine map).

    The BN and the Linear together are the classifier: pre-logits are the pooled MSCSA features
    before the BN, so they are the same before and after ``fuse()``, and a head without classes
    (``num_classes=0``) returns them. ``global_pool=''`` skips the pooling: pre-logits are the map
    itself and logits are given per position (B x classes x h x w)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float = 0.0, global_pool: str | None = "avg") -> None:
        super().__init__()
        self.in_features = self.num_features = dim
        self.global_pool = resolve_global_pool(global_pool)
        self.drop = nn.Dropout(drop_rate)
        self._make_classifier(num_classes)

    def _make_classifier(self, num_classes: int, device: Optional[torch.device] = None,
                         dtype: Optional[torch.dtype] = None) -> None:
        self.num_classes = num_classes
        if num_classes > 0:
            self.norm: nn.Module = nn.BatchNorm2d(self.in_features, device=device, dtype=dtype)
            self.fc: nn.Module = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype)
            trunc_normal_many_([self.fc.weight], [0.02])  # timm's head init, drawn faster
            nn.init.zeros_(self.fc.bias)
        else:
            self.norm = nn.Identity()
            self.fc = nn.Identity()

    def reset(self, num_classes: int, global_pool: str | None = None, device: Optional[torch.device] = None,
              dtype: Optional[torch.dtype] = None) -> None:
        """A new, untrained classifier for ``num_classes`` (0: none) on ``device`` / ``dtype`` (default:
        those of the current classifier); ``global_pool`` None keeps the pooling."""
        if global_pool is not None:
            self.global_pool = resolve_global_pool(global_pool)
        like = next(self.parameters(), None)
        if like is not None:
            device = like.device if device is None else device
            dtype = like.dtype if dtype is None else dtype
        self._make_classifier(num_classes, device, dtype)
        self.train(self.training)  # new layers follow the head's mode

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pool = self.global_pool == "avg"
        if pre_logits or self.num_classes == 0:
            return x.mean(dim=(2, 3)) if pool else x
        x = self.norm(x)
        if pool:
            return self.fc(self.drop(x.mean(dim=(2, 3))))
        return self.fc(self.drop(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def fuse(self) -> "ClassificationHead":
        if isinstance(self.norm, nn.BatchNorm2d) and isinstance(self.fc, nn.Linear):
            self.fc = fold_bn_into_linear(self.norm, self.fc)
            self.norm = nn.Identity()
        return self


class DenseFusion(nn.Module):
    """Fig. 5: each stage's MSCSA part g_i injects into the backbone map F_i:
    out_i = F_i * hardsigmoid(ConvBN_w(g_i)) + ConvBN_b(g_i), ConvBN: Ci' -> Ci."""

    def __init__(self, split_channels: Sequence[int], stage_channels: Sequence[int], order: str = "conv_first") -> None:
        super().__init__()
        if order not in ("conv_first", "upsample_first"):
            raise ValueError(f"unknown fusion order {order!r}")
        self.split_channels = list(split_channels)
        self.order = order
        self.weight_convs = nn.ModuleList([ConvBN(g, c) for g, c in zip(split_channels, stage_channels)])
        self.bias_convs = nn.ModuleList([ConvBN(g, c) for g, c in zip(split_channels, stage_channels)])
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor, features: List[torch.Tensor]) -> List[torch.Tensor]:
        parts = torch.split(x, self.split_channels, dim=1)
        fused: List[torch.Tensor] = []
        for index, (weight_conv, bias_conv) in enumerate(zip(self.weight_convs, self.bias_convs)):
            part, feature = parts[index], features[index]
            size = feature.shape[-2:]
            if self.order == "upsample_first":
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
                weight, bias = weight_conv(part), bias_conv(part)
            else:
                weight = F.interpolate(weight_conv(part), size=size, mode="bilinear", align_corners=False)
                bias = F.interpolate(bias_conv(part), size=size, mode="bilinear", align_corners=False)
            fused.append(feature * self.gate(weight) + bias)
        return fused
