"""P2T: Pyramid Pooling Transformer (Wu, Liu, Zhan and Cheng, TPAMI 2022), registered with timm.

Written from the paper's description; no weights are published for this implementation.

Each of the four stages starts with an overlapping patch embedding (a 7x7 stride-4 conv for the
first, 3x3 stride-2 convs after it, each followed by LayerNorm), so the stage maps are at strides
4, 8, 16 and 32. A block is ``x + P-MHSA(LN(x))`` then ``x + IRB(LN(x))``:

* P-MHSA (pooling-based multi-head self-attention): queries come from every token; keys and
  values come from a pyramid of adaptive average poolings of the map (one per pooling ratio r,
  output size ``round(H / r) x round(W / r)``), each refined by a depthwise 3x3 conv added as a
  residual (the paper's relative position encoding), flattened, concatenated and LayerNormed.
* IRB (inverted residual block): fc -> Hardswish -> depthwise 3x3 conv -> Hardswish -> fc.

Each stage ends with a LayerNorm; its output is an NCHW map. Any input size works (the pooled
sizes follow the map, at least 1x1). The model scripts (TorchScript) and traces (torch.fx): each
pooling is a ``RatioAvgPool`` module, registered with timm as a leaf that tracing does not enter
(its output size is computed from the input's, which a symbolic trace cannot turn into numbers).

    >>> import timm, mscsa_lab.models.p2t
    >>> model = timm.create_model("p2t_tiny")                       # ImageNet classifier
    >>> features = timm.create_model("p2t_tiny", features_only=True)  # four NCHW maps
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["P2T", "P2TStage", "P2TBlock", "PoolingAttention", "RatioAvgPool", "InvertedResidualFFN",
           "OverlapPatchEmbed"]

# Pooling ratios of P2T per stage: with a 224 input each stage pools to 5x5, 4x4, 3x3 and 2x2
# (7x7, 4x4, 2x2 and 2x2 in the last stage).
DEFAULT_POOL_RATIOS = ((12, 16, 20, 24), (6, 8, 10, 12), (3, 4, 5, 6), (1, 2, 3, 4))


def pooled_sizes(height: int, width: int, ratios: List[int]) -> List[Tuple[int, int]]:
    """The output size of each pooling: ``round(H / r) x round(W / r)``, at least 1x1."""
    return [(max(1, int(round(height / r))), max(1, int(round(width / r)))) for r in ratios]


@register_notrace_module  # a leaf for torch.fx: its output size is computed from its input's size
class RatioAvgPool(nn.Module):
    """Adaptive average pooling of an NCHW map to ``round(H / ratio) x round(W / ratio)`` (at least 1x1)."""

    def __init__(self, ratio: int) -> None:
        super().__init__()
        self.ratio = int(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int(): plain numbers under torch.jit.trace too (fvcore counts FLOPs on such a trace)
        size = pooled_sizes(int(x.shape[-2]), int(x.shape[-1]), [self.ratio])[0]
        return F.adaptive_avg_pool2d(x, size)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (padding k // 2), then LayerNorm: NCHW -> NHWC."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PoolingAttention(nn.Module):
    """P-MHSA: multi-head attention whose keys/values are a pyramid of pooled maps (NHWC in/out)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        pool_ratios: Sequence[int] = (1, 2, 3, 4),
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pool_ratios = tuple(int(r) for r in pool_ratios)
        self.pools = nn.ModuleList([RatioAvgPool(r) for r in self.pool_ratios])  # no parameters
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        # One depthwise 3x3 conv per pooled map, added as a residual (relative position encoding).
        self.pool_convs = nn.ModuleList(
            [nn.Conv2d(dim, dim, 3, padding=1, groups=dim) for _ in self.pool_ratios]
        )
        self.norm = norm_layer(dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def pooled_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, S, C): the pyramid of pooled maps as S tokens, LayerNormed."""
        x = x.permute(0, 3, 1, 2)
        tokens: List[torch.Tensor] = []
        for pool, conv in zip(self.pools, self.pool_convs):
            pooled = pool(x)
            pooled = pooled + conv(pooled)
            tokens.append(pooled.flatten(2))
        return self.norm(torch.cat(tokens, dim=2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        q = self.q(x).reshape(batch, height * width, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(self.pooled_tokens(x))
        k, v = kv.reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj_drop(self.proj(x))


class InvertedResidualFFN(nn.Module):
    """IRB: fc -> act -> depthwise 3x3 conv -> act -> fc (NHWC in/out)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: Type[nn.Module] = nn.Hardswish,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act1 = act_layer()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act2 = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.fc1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act2(x))
        return self.drop(self.fc2(x))


class P2TBlock(nn.Module):
    """``x + P-MHSA(LN(x))`` then ``x + IRB(LN(x))`` on an NHWC map."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pool_ratios: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Type[nn.Module] = nn.Hardswish,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = PoolingAttention(dim, num_heads, pool_ratios, qkv_bias, attn_drop, proj_drop, norm_layer)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = InvertedResidualFFN(dim, int(dim * mlp_ratio), act_layer, proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class P2TStage(nn.Module):
    """Patch embedding (downsample), blocks, LayerNorm: NCHW in, NCHW out."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        pool_ratios: Sequence[int],
        patch_size: int = 3,
        stride: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Union[float, Sequence[float]] = 0.0,
        act_layer: Type[nn.Module] = nn.Hardswish,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.downsample = OverlapPatchEmbed(in_chs, dim, patch_size, stride)
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            P2TBlock(dim, num_heads, pool_ratios, mlp_ratio, qkv_bias, proj_drop, attn_drop, rates[i],
                     act_layer, norm_layer)
            for i in range(depth)
        ])
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.downsample(x))
        return self.norm(x).permute(0, 3, 1, 2)


class P2T(nn.Module):
    """Pyramid Pooling Transformer: four P-MHSA stages at strides 4..32, average pool, linear head."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (48, 96, 240, 384),
        depths: Sequence[int] = (2, 2, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8.0, 8.0, 4.0, 4.0),
        pool_ratios: Sequence[Sequence[int]] = DEFAULT_POOL_RATIOS,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        act_layer: Type[nn.Module] = nn.Hardswish,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        num_stages = len(embed_dims)
        if not len(depths) == len(num_heads) == len(mlp_ratios) == len(pool_ratios) == num_stages:
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and pool_ratios need one entry per stage")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        total = sum(depths)
        rates = calculate_drop_path_rates(drop_path_rate, total)  # computed on the CPU: builds on any device
        stages, feature_info = [], []
        prev_dim, reduction, start = in_chans, 1, 0
        for i in range(num_stages):
            patch_size, stride = (7, 4) if i == 0 else (3, 2)
            reduction *= stride
            stages.append(P2TStage(
                prev_dim, embed_dims[i], depths[i], num_heads[i], pool_ratios[i], patch_size, stride,
                mlp_ratios[i], qkv_bias, proj_drop_rate, attn_drop_rate, rates[start:start + depths[i]],
                act_layer, norm_layer,
            ))
            feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
            prev_dim, start = embed_dims[i], start + depths[i]
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
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
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stages\.0\.downsample", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stage maps (NCHW) picked by ``indices`` (last n if int, all if None), and the final map
        unless ``intermediates_only``. Every stage already ends in its own LayerNorm, so ``norm``
        changes nothing."""
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW', got " + output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice by a variable
            stages = self.stages
        else:
            stages = self.stages[: max_index + 1]
        intermediates: List[torch.Tensor] = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
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
        """Drop the stages after the last wanted one (and the head); the stage norms stay."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            self.stages = self.stages[: max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.proj", "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"p2t_tiny": _cfg()})  # no published weights for this code


def _create_p2t(variant: str, pretrained: bool = False, **kwargs) -> P2T:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        P2T,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def p2t_tiny(pretrained: bool = False, **kwargs) -> P2T:
    """P2T-Tiny: 11.6 M parameters and 1.8 GFLOPs at 224x224 in the paper."""
    model_args = dict(
        embed_dims=(48, 96, 240, 384), depths=(2, 2, 6, 3), num_heads=(1, 2, 5, 8),
        mlp_ratios=(8.0, 8.0, 4.0, 4.0), pool_ratios=DEFAULT_POOL_RATIOS,
    )
    return _create_p2t("p2t_tiny", pretrained=pretrained, **dict(model_args, **kwargs))
