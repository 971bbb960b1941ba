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
from typing import List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

# The blocks live in their own module; importing them from here keeps working.
from mscsa_lab.models.shunted_blocks import (  # noqa: F401
    DetailFeedForward,
    OverlapPatchEmbed,
    ShuntedAttention,
    ShuntedBlock,
    ShuntedStage,
    Stem,
    TokenAggregation,
)

__all__ = ["ShuntedTransformer", "shunted_tiny"]


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
        # Per block, split per stage; computed on the CPU, so the model builds on any device (meta too).
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
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
            raise ValueError("output_fmt must be 'NCHW', got " + output_fmt)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice by a variable
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
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
