"""TopFormer's building blocks (Zhang et al., CVPR 2022): the token pyramid and the Scale-Aware
Semantics Extractor, shared by the classification model (``topformer``) and the segmentation models
(``topformer_seg``). See ``mscsa_lab.models.topformer`` for the data flow.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from torch import nn

__all__ = ["MODEL_CFGS", "ConvNormAct", "InvertedResidual", "TokenPyramidModule", "pool_tokens", "Attention", "FFN",
           "SemanticsBlock", "SemanticsExtractor", "init_weights", "topformer_cfg"]

# Inverted residual settings per block: (kernel, expand ratio, out channels, stride).
MODEL_CFGS: dict[str, dict[str, Any]] = dict(
    topformer_tiny=dict(
        stem_chs=16,
        blocks=(
            (3, 1, 16, 1),
            (3, 4, 16, 2),  # 1/4
            (3, 3, 16, 1),  # -> T1
            (5, 3, 32, 2),  # 1/8
            (5, 3, 32, 1),  # -> T2
            (3, 3, 64, 2),  # 1/16
            (3, 3, 64, 1),  # -> T3
            (5, 6, 96, 2),  # 1/32
            (5, 6, 96, 1),  # -> T4
        ),
        out_blocks=(2, 4, 6, 8),
        depth=4,
        num_heads=4,
        key_dim=16,
        attn_ratio=2.0,
        mlp_ratio=2.0,
        inject_chs=128,
        head_dw=True,
    ),
    topformer_base=dict(
        stem_chs=16,
        blocks=(
            (3, 1, 16, 1),
            (3, 4, 32, 2),  # 1/4
            (3, 3, 32, 1),  # -> T1
            (5, 3, 64, 2),  # 1/8
            (5, 3, 64, 1),  # -> T2
            (3, 3, 128, 2),  # 1/16
            (3, 3, 128, 1),  # -> T3
            (5, 6, 160, 2),  # 1/32
            (5, 6, 160, 1),
            (3, 6, 160, 1),  # -> T4
        ),
        out_blocks=(2, 4, 6, 9),
        depth=4,
        num_heads=8,
        key_dim=16,
        attn_ratio=2.0,
        mlp_ratio=2.0,
        inject_chs=256,
        head_dw=False,  # the released TopFormer-B config uses a full 1x1 conv in the head
    ),
)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: Optional[type[nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.add_module(
            "conv", nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_chs))
        if act_layer is not None:
            self.add_module("act", act_layer())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand+BN+act] -> kxk depthwise+BN+act -> 1x1 project+BN (+ skip)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 1.0,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = (
            ConvNormAct(in_chs, hidden, 1, act_layer=act_layer) if expand_ratio != 1 else nn.Identity()
        )
        self.conv_dw = ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden, act_layer=act_layer)
        self.conv_pwl = ConvNormAct(hidden, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.has_skip else out


class TokenPyramidModule(nn.Module):
    """Stem (3x3 stride-2 conv+BN+ReLU) and a stack of inverted residuals; the outputs of
    ``out_blocks`` are the token maps at strides 4, 8, 16 and 32."""

    def __init__(
        self,
        blocks: Sequence[Sequence[float]],
        out_blocks: Sequence[int],
        stem_chs: int = 16,
        in_chans: int = 3,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.stem = ConvNormAct(in_chans, stem_chs, 3, 2, act_layer=act_layer)
        layers, chs, stride = [], stem_chs, 2
        self.out_blocks = list(out_blocks)
        self.out_channels: List[int] = []
        self.out_strides: List[int] = []
        for index, (kernel, expand, out_chs, block_stride) in enumerate(blocks):
            layers.append(InvertedResidual(chs, int(out_chs), int(kernel), int(block_stride), expand, act_layer))
            chs, stride = int(out_chs), stride * int(block_stride)
            if index in self.out_blocks:
                self.out_channels.append(chs)
                self.out_strides.append(stride)
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        tokens = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.out_blocks:
                tokens.append(x)
        return tokens


def pool_tokens(tokens: List[torch.Tensor], extra_stride: int = 1) -> torch.Tensor:
    """Average-pool every token map to the last (stride-32) map's size, divided (ceiling) by
    ``extra_stride`` (2 gives the paper's 1/64 for segmentation), and concatenate on channels."""
    height, width = tokens[-1].shape[-2:]
    size = ((height - 1) // extra_stride + 1, (width - 1) // extra_stride + 1)
    return torch.cat([F.adaptive_avg_pool2d(t, size) for t in tokens], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with LeViT-style 1x1 conv+BN projections on a BCHW map:
    q, k: dim -> heads*key_dim, v: dim -> heads*attn_ratio*key_dim; output: act -> 1x1 conv+BN.

    ``scaled``: TopFormer's published description computes softmax(QK^T)V with no 1/sqrt(d), so
    the default leaves it out; ``scaled=True`` is the usual softmax(QK^T/sqrt(d))V reading."""

    def __init__(
        self,
        dim: int,
        key_dim: int = 16,
        num_heads: int = 4,
        attn_ratio: float = 2.0,
        act_layer: type[nn.Module] = nn.ReLU6,
        scaled: bool = False,
    ) -> None:
        super().__init__()
        self.scale = key_dim**-0.5 if scaled else 1.0
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = int(attn_ratio * key_dim)
        self.q = ConvNormAct(dim, num_heads * key_dim)
        self.k = ConvNormAct(dim, num_heads * key_dim)
        self.v = ConvNormAct(dim, num_heads * self.value_dim)
        self.act = act_layer()
        self.proj = ConvNormAct(num_heads * self.value_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, heads, self.key_dim, height * width).transpose(-2, -1)
        k = self.k(x).reshape(batch, heads, self.key_dim, height * width).transpose(-2, -1)
        v = self.v(x).reshape(batch, heads, self.value_dim, height * width).transpose(-2, -1)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(-2, -1).reshape(batch, heads * self.value_dim, height, width)
        return self.proj(self.act(out))


class FFN(nn.Module):
    """1x1 conv+BN -> 3x3 depthwise conv (bias) -> act -> 1x1 conv+BN."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act_layer: type[nn.Module] = nn.ReLU6, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = ConvNormAct(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = ConvNormAct(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class SemanticsBlock(nn.Module):
    """x += Attention(x); x += FFN(x). No separate norm: every projection carries its own BN."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU6,
        attn_scaled: bool = False,
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio, act_layer, attn_scaled)
        self.mlp = FFN(dim, mlp_ratio, act_layer, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class SemanticsExtractor(nn.Sequential):
    """Scale-Aware Semantics Extractor: ``depth`` transformer blocks on the pooled token map."""

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        key_dim: int = 16,
        num_heads: int = 4,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_scaled: bool = False,
    ) -> None:
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        super().__init__(*[
            SemanticsBlock(dim, key_dim, num_heads, attn_ratio, mlp_ratio, drop_rate, r, attn_scaled=attn_scaled)
            for r in rates
        ])


def init_weights(module: nn.Module) -> None:
    """TopFormer's initialisation: convs normal with std sqrt(2 / fan-out), BN at 1 / 0, Linear truncated normal."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def topformer_cfg(**kwargs: Any) -> dict[str, Any]:
    """timm's pretrained config of a TopFormer model (no weights are published: ``url`` is empty)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "tpm.stem.conv",
        "classifier": "head",
        "fixed_input_size": False,
        **kwargs,
    }
