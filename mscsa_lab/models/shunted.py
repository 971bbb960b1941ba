"""Shunted Transformer (Shunted-T), written from the paper's description.

Ren, Zhou, Zhang, Feng, Zhang, Yan: "Shunted Self-Attention via Multi-Scale Token Aggregation",
CVPR 2022.

The model is a four-stage pyramid (strides 4, 8, 16, 32):

- stem: 7x7 stride-2 conv + BN + ReLU, then a 2x2 stride-2 patch-merging conv + LayerNorm
  (the tiny model's "num_conv=0" head), giving stride 4;
- stages 2-4 start with a 3x3 stride-2 overlapping patch embedding (conv + LayerNorm);
- each block is pre-norm: ``x + SSA(LN(x))`` then ``x + DetailFFN(LN(x))``; each stage ends in a
  LayerNorm;
- shunted self-attention (SSA) splits the heads into two groups. Group one takes keys/values from
  the map aggregated with a ``r x r`` stride-``r`` conv, group two with an ``r/2 x r/2`` stride-``r/2``
  conv (each followed by LayerNorm + GELU); each group's values get a 3x3 depthwise "local
  enhancement" conv (residual) on their aggregated map. With ``r == 1`` (the last stage) it is
  plain multi-head attention with the local enhancement on V;
- the detail-specific feed-forward is ``fc1 -> x + DWConv3x3(x) -> GELU -> fc2``.

Any input size works: the aggregation and patch-merging convs pad the map on the right/bottom to a
multiple of their stride, so no pixel is dropped and maps never shrink to zero.

Importing this module registers ``shunted_tiny`` with timm (no pretrained weights exist).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["ShuntedTransformer", "shunted_tiny"]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map on the right and bottom so that H and W are multiples of ``multiple``."""
    if multiple <= 1:
        return x
    height, width = x.shape[-2:]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def _tokens_to_map(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


class Stem(nn.Module):
    """Convolutional stem to stride 4: 7x7/2 conv + BN + ReLU, ``num_conv`` extra 3x3 convs,
    then a 2x2/2 patch-merging conv + LayerNorm. NCHW in and out."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, hidden_dim: int = 64, num_conv: int = 0) -> None:
        super().__init__()
        layers: List[nn.Module] = [
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        ]
        for _ in range(num_conv):
            layers += [
                nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dim, embed_dim, 2, stride=2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.proj(_pad_to_multiple(x, 2))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OverlapPatchEmbed(nn.Module):
    """3x3 stride-2 conv (padding 1) + LayerNorm. NCHW in and out."""

    def __init__(self, in_chs: int, out_chs: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TokenAggregation(nn.Module):
    """Multi-scale token aggregation for one head group: ``rate x rate`` stride-``rate`` conv
    (input padded to a multiple of ``rate``) + LayerNorm + GELU. Tokens in, tokens and size out."""

    def __init__(self, dim: int, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self.conv = nn.Conv2d(dim, dim, rate, stride=rate)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.conv(_pad_to_multiple(_tokens_to_map(x, size), self.rate))
        out_size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        return self.act(self.norm(x)), out_size


class ShuntedAttention(nn.Module):
    """Shunted self-attention (SSA).

    With ``sr_ratio > 1`` the heads are split into two equal groups; group ``g`` attends to keys
    and values taken from the map aggregated at rate ``sr_ratio`` (g=1) or ``sr_ratio // 2`` (g=2).
    Each group has its own K/V projection (``dim -> dim``: half for K, half for V) and 3x3 depthwise
    local enhancement on its values. With ``sr_ratio == 1`` it is ordinary multi-head attention
    with the local enhancement on V.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        if sr_ratio > 1:
            if num_heads % 2:
                raise ValueError(f"shunted attention needs an even number of heads, got {num_heads}")
            half = dim // 2
            self.agg1 = TokenAggregation(dim, sr_ratio)
            self.agg2 = TokenAggregation(dim, max(sr_ratio // 2, 1))
            self.kv1 = nn.Linear(dim, 2 * half, bias=qkv_bias)
            self.kv2 = nn.Linear(dim, 2 * half, bias=qkv_bias)
            self.local1 = nn.Conv2d(half, half, 3, padding=1, groups=half)
            self.local2 = nn.Conv2d(half, half, 3, padding=1, groups=half)
        else:
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
            self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _keys_values(
            self,
            x: torch.Tensor,
            size: Tuple[int, int],
            kv: nn.Linear,
            local: nn.Conv2d,
            num_heads: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """K and V as (B, heads, N, head_dim), V with local enhancement on its ``size`` map."""
        batch, length, _ = x.shape
        k, v = kv(x).reshape(batch, length, 2, num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v_map = v.transpose(2, 3).reshape(batch, num_heads * self.head_dim, size[0], size[1])
        v = v + local(v_map).reshape(batch, num_heads, self.head_dim, length).transpose(2, 3)
        return k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        batch, length, channels = x.shape
        q = self.q(x).reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            half_heads = self.num_heads // 2
            x1, size1 = self.agg1(x, size)
            x2, size2 = self.agg2(x, size)
            k1, v1 = self._keys_values(x1, size1, self.kv1, self.local1, half_heads)
            k2, v2 = self._keys_values(x2, size2, self.kv2, self.local2, half_heads)
            out = torch.cat([
                self._attend(q[:, :half_heads], k1, v1),
                self._attend(q[:, half_heads:], k2, v2),
            ], dim=1)
        else:
            k, v = self._keys_values(x, size, self.kv, self.local, self.num_heads)
            out = self._attend(q, k, v)
        out = out.transpose(1, 2).reshape(batch, length, channels)
        return self.proj_drop(self.proj(out))


class DetailFeedForward(nn.Module):
    """Detail-specific feed-forward: fc1 -> (x + DWConv3x3(x)) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        x = x + self.dwconv(_tokens_to_map(x, size)).flatten(2).transpose(1, 2)
        x = self.drop1(self.act(x))
        return self.drop2(self.fc2(x))


class ShuntedBlock(nn.Module):
    """Pre-norm transformer block: ``x + SSA(LN(x))``, ``x + DetailFFN(LN(x))``."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShuntedAttention(
            dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DetailFeedForward(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        x = x + self.drop_path2(self.mlp(self.norm2(x), size))
        return x


class ShuntedStage(nn.Module):
    """Optional down-sampling patch embedding, blocks, final LayerNorm. NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            num_heads: int,
            mlp_ratio: float,
            sr_ratio: int,
            downsample: bool = True,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: Union[float, Sequence[float]] = 0.0,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = OverlapPatchEmbed(in_chs, dim) if downsample else nn.Identity()
        drop_path = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            ShuntedBlock(
                dim, num_heads, mlp_ratio=mlp_ratio, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[i],
            )
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        batch, channels, height, width = x.shape
        size = (height, width)
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, size, use_reentrant=False)
            else:
                x = block(x, size)
        x = self.norm(x)
        return _tokens_to_map(x, size)


class ShuntedTransformer(nn.Module):
    """Shunted Transformer: conv stem to stride 4, four stages of shunted self-attention blocks
    (strides 4, 8, 16, 32), global average pooling and a linear classifier."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (1, 2, 4, 1),
            num_heads: Tuple[int, ...] = (2, 4, 8, 16),
            mlp_ratios: Tuple[float, ...] = (8.0, 8.0, 4.0, 4.0),
            sr_ratios: Tuple[int, ...] = (8, 4, 2, 1),
            num_conv: int = 0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == num_stages):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and sr_ratios must have the same length")
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, embed_dims[0], hidden_dim=64, num_conv=num_conv)
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))]
        stages = []
        self.feature_info = []
        prev_dim = embed_dims[0]
        for i in range(num_stages):
            stages.append(ShuntedStage(
                prev_dim,
                embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i],
                sr_ratio=sr_ratios[i],
                downsample=i > 0,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
            ))
            prev_dim = embed_dims[i]
            self.feature_info.append(dict(num_chs=prev_dim, reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.(?:downsample|norm)', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the stage outputs.

        Args:
            x: Input image tensor.
            indices: Take last n stages if int, all if None, select matching indices if sequence.
            norm: Unused; every stage already ends in its own LayerNorm.
            stop_early: Stop after the last wanted stage.
            output_fmt: Shape of intermediate feature outputs (only 'NCHW').
            intermediates_only: Only return the intermediate features.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for idx, stage in enumerate(stages):
            x = stage(x)
            if idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted one (and the head)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_shunted(variant: str, pretrained: bool = False, **kwargs) -> ShuntedTransformer:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        ShuntedTransformer,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv.0', 'classifier': 'head',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'shunted_tiny': _cfg(),
})


@register_model
def shunted_tiny(pretrained: bool = False, **kwargs) -> ShuntedTransformer:
    """Shunted-T: 11.5 M parameters, 2.1 GFLOPs at 224x224 (paper)."""
    model_args = dict(
        embed_dims=(64, 128, 256, 512), depths=(1, 2, 4, 1), num_heads=(2, 4, 8, 16),
        mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), num_conv=0,
    )
    return _create_shunted('shunted_tiny', pretrained=pretrained, **dict(model_args, **kwargs))
