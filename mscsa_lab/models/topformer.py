"""TopFormer: Token Pyramid Transformer (Zhang et al., CVPR 2022), written from the paper.

Zhang, Wang, Shen, et al., "TopFormer: Token Pyramid Transformer for Mobile Semantic
Segmentation", CVPR 2022.

Data flow (all tensors BCHW)::

    image --stem (3x3 s2 conv)--> MobileNetV2 inverted residuals = Token Pyramid Module (TPM)
          taps at strides 4, 8, 16, 32 = the four token maps T1..T4
    T1..T4 --avg-pool to one size--> concat (C = sum Ci) --> Scale-Aware Semantics Extractor (SASE):
          depth x [x += Attention(x) (LeViT conv+BN q/k/v, softmax(QK^T)V unscaled as published);
                   x += FFN(x) (1x1, 3x3 dw, 1x1)]
    classification (``TopFormer``): SASE output -> BN -> global average pool -> Linear
    segmentation (``TopFormerSeg``): the SASE output split back into the stages' channel slices
          -> Semantic Injection Module on T2..T4: ConvBN(T_i) * hsigmoid(ConvBN(g_i)) + ConvBN(g_i)
          (g_i upsampled to T_i's size) -> light head: sum at stride 8, 1x1 dw conv+BN+ReLU, 1x1 conv

Pooling: the segmentation model pools the tokens to 1/64 of the input (the paper's setting), the
classification model to the stride-32 map's size (1/32, as the MSCSA paper does for ImageNet).

``timm.create_model('topformer_tiny', features_only=True)`` returns the four TPM token maps only
(SASE and head are pruned), the place where MSCSA replaces SASE. No pretrained weights exist.

    >>> import timm, mscsa_lab.models.topformer
    >>> model = timm.create_model("topformer_tiny", num_classes=10)
    >>> seg = timm.create_model("topformer_tiny", task="dense")  # TopFormerSeg, 150 ADE20K classes

``TopFormerSegMSCSA`` is the MSCSA paper's Table 3 model: ``TopFormerSeg`` with MSCSA in place of SASE
(``mscsa_lab.create_mscsa_model("topformer_tiny", task="segmentation")`` builds it from the profile).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._registry import generate_default_cfgs
from torch import nn

from mscsa_lab.models.config import MSCSAConfig
from mscsa_lab.models.layers import Fusable, bn_scale_shift, fuse_modules
from mscsa_lab.models.mscsa import MSCSA, pooled_size, scale_sizes

__all__ = ["TopFormer", "TopFormerSeg", "TopFormerSegMSCSA", "TokenPyramidModule", "SemanticsExtractor", "MODEL_CFGS"]

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


# --------------------------------------------------------------------------- building blocks
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


def pool_tokens(tokens: Sequence[torch.Tensor], extra_stride: int = 1) -> torch.Tensor:
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


def _init_weights(module: nn.Module) -> None:
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
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- classification
class TopFormer(nn.Module):
    """TopFormer for image classification: TPM -> tokens pooled to the stride-32 size -> concat ->
    SASE -> BN -> global average pool -> Linear."""

    def __init__(
        self,
        blocks: Sequence[Sequence[float]] = MODEL_CFGS["topformer_tiny"]["blocks"],
        out_blocks: Sequence[int] = MODEL_CFGS["topformer_tiny"]["out_blocks"],
        stem_chs: int = 16,
        depth: int = 4,
        num_heads: int = 4,
        key_dim: int = 16,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        pool_stride: int = 1,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_scaled: bool = False,
    ) -> None:
        """``pool_stride``: extra pooling of the tokens below the stride-32 size (1 = 1/32, 2 = 1/64).
        ``attn_scaled``: scale the attention logits by 1/sqrt(key_dim) (TopFormer as published does not)."""
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: only 'avg' (or '') is supported")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.pool_stride = pool_stride
        self.drop_rate = drop_rate
        self.tpm = TokenPyramidModule(blocks, out_blocks, stem_chs, in_chans)
        self.token_channels = list(self.tpm.out_channels)
        self.num_features = self.head_hidden_size = sum(self.token_channels)
        self.sase = SemanticsExtractor(
            self.num_features, depth, key_dim, num_heads, attn_ratio, mlp_ratio, 0.0, drop_path_rate, attn_scaled
        )
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=c, reduction=s, module=f"tpm.blocks.{b}")
            for c, s, b in zip(self.tpm.out_channels, self.tpm.out_strides, self.tpm.out_blocks)
        ]
        _init_weights(self)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^tpm\.stem", blocks=[(r"^tpm\.blocks\.(\d+)", None), (r"^sase\.(\d+)", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r}: only 'avg' (or '') is supported")
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
        """The TPM token maps (strides 4, 8, 16, 32) picked by ``indices`` (int: last n; None: all),
        and unless ``intermediates_only`` the final SASE features. ``norm`` has no effect (the
        token maps have no norm of their own)."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        # SASE needs all four token maps, so blocks past the last tap are skipped only when the
        # final features are not wanted.
        last_block = self.tpm.out_blocks[max_index] if intermediates_only else len(self.tpm.blocks) - 1
        tokens, intermediates = [], []
        x = self.tpm.stem(x)
        for index, block in enumerate(self.tpm.blocks):
            if index > last_block:
                break
            x = block(x)
            if index in self.tpm.out_blocks:
                tokens.append(x)
                if len(tokens) - 1 in take_indices:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self.norm(self.sase(pool_tokens(tokens, self.pool_stride))), intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Keep only what the token maps picked by ``indices`` need: SASE, norm and head go."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.tpm.blocks = self.tpm.blocks[: self.tpm.out_blocks[max_index] + 1]
        self.sase = nn.Identity()
        self.norm = nn.Identity()
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        self.reset_classifier(0, "")
        return take_indices

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tpm(x)
        return self.norm(self.sase(pool_tokens(tokens, self.pool_stride)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- segmentation
class SemanticInjection(nn.Module):
    """Semantic Injection Module: ConvBN(local) * hsigmoid(ConvBN(global)) + ConvBN(global),
    the global terms (at the pooled size) bilinearly upsampled to the local token map's size."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.local_embedding = ConvNormAct(in_chs, out_chs)
        self.global_act = ConvNormAct(in_chs, out_chs)
        self.global_embedding = ConvNormAct(in_chs, out_chs)
        self.gate = nn.Hardsigmoid()

    def forward(self, local_tokens: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        size = local_tokens.shape[-2:]
        gate = F.interpolate(self.gate(self.global_act(semantics)), size=size, mode="bilinear", align_corners=False)
        bias = F.interpolate(self.global_embedding(semantics), size=size, mode="bilinear", align_corners=False)
        return self.local_embedding(local_tokens) * gate + bias


class SegHead(nn.Module):
    """The paper's light head: sum of the injected maps at the finest size, 1x1 conv+BN+ReLU
    (depthwise when ``depthwise``, as for TopFormer-T), dropout, 1x1 conv to the classes."""

    def __init__(self, chs: int, num_classes: int = 150, drop_rate: float = 0.1, depthwise: bool = True) -> None:
        super().__init__()
        self.fuse = ConvNormAct(chs, chs, 1, groups=chs if depthwise else 1, act_layer=nn.ReLU)
        self.drop = nn.Dropout2d(drop_rate)
        self.cls = nn.Conv2d(chs, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[0]
        for feature in features[1:]:
            x = x + F.interpolate(feature, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls(self.drop(self.fuse(x)))


class TopFormerSeg(nn.Module):
    """TopFormer for semantic segmentation: TPM -> tokens pooled to 1/64 -> SASE -> Semantic
    Injection into the stride 8, 16, 32 tokens -> light head. Returns logits at stride 8
    (``(B, num_classes, ceil(H/8), ceil(W/8))``, upsample them to the input for the loss), as the
    paper's decode head does; the published FLOPs leave that final upsampling out."""

    def __init__(
        self,
        blocks: Sequence[Sequence[float]] = MODEL_CFGS["topformer_tiny"]["blocks"],
        out_blocks: Sequence[int] = MODEL_CFGS["topformer_tiny"]["out_blocks"],
        stem_chs: int = 16,
        depth: int = 4,
        num_heads: int = 4,
        key_dim: int = 16,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        inject_chs: int = 128,
        head_dw: bool = True,
        inject_indices: Sequence[int] = (1, 2, 3),
        pool_stride: int = 2,
        num_classes: int = 150,
        in_chans: int = 3,
        drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        attn_scaled: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pool_stride = pool_stride
        self.inject_indices = list(inject_indices)
        self.tpm = TokenPyramidModule(blocks, out_blocks, stem_chs, in_chans)
        self.token_channels = list(self.tpm.out_channels)
        dim = sum(self.token_channels)
        self.sase = SemanticsExtractor(dim, depth, key_dim, num_heads, attn_ratio, mlp_ratio, 0.0, drop_path_rate,
                                       attn_scaled)
        self.sim = nn.ModuleList([SemanticInjection(self.token_channels[i], inject_chs) for i in self.inject_indices])
        self.decode_head = SegHead(inject_chs, num_classes, drop_rate, head_dw)
        self.feature_info = [
            dict(num_chs=inject_chs, reduction=self.tpm.out_strides[i], module=f"sim.{n}")
            for n, i in enumerate(self.inject_indices)
        ]
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The injected maps at strides 8, 16, 32 (``inject_chs`` channels each)."""
        tokens = self.tpm(x)
        semantics = torch.split(self.sase(pool_tokens(tokens, self.pool_stride)), self.token_channels, dim=1)
        return [sim(tokens[i], semantics[i]) for sim, i in zip(self.sim, self.inject_indices)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.forward_features(x))


# --------------------------------------------------------------------------- segmentation + MSCSA
# MODEL_CFGS keys that describe SASE (replaced by MSCSA) rather than the token pyramid, the
# injection or the head: ``TopFormerSegMSCSA.from_variant`` leaves them out.
SASE_KEYS = ("depth", "num_heads", "key_dim", "attn_ratio", "mlp_ratio")


@torch.no_grad()
def _fold_conv_norm(module: nn.Module) -> None:
    """Fold the BN of every ``ConvNormAct`` under ``module`` into its conv (eval mode only): the
    conv gets a bias and the BN becomes ``nn.Identity``; the activation stays."""
    for m in module.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            conv = m.conv
            scale, shift = bn_scale_shift(m.bn)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              groups=conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            fused.bias.copy_(bias * scale + shift)
            m.conv, m.bn = fused, nn.Identity()


class TopFormerSegMSCSA(nn.Module):
    """TopFormer segmentation with MSCSA in place of the Scale-Aware Semantics Extractor (the MSCSA
    paper's Table 3). TPM -> token maps T1..T4 (strides 4..32) -> MSCSA(task="dense": the four maps
    pooled to ``config.dense_pool_stride``, 1/64 in the TopFormer profiles) -> the MSCSA map split
    back into the stages' channel parts g1..g4 -> TopFormer's Semantic Injection Modules on
    (T2, g2), (T3, g3), (T4, g4) -> TopFormer's light head. Logits at stride 8, as ``TopFormerSeg``.

    g1 (the stride-4 part) is computed by MSCSA but injected nowhere, as SASE's is in TopFormer; it
    still takes part in every MSCSA attention and FFN, so all MSCSA parameters are trained. The
    injection is TopFormer's own (gate before the upsampling), not MSCSA's Fig. 5 fusion, so
    ``config.fusion_order`` has no effect here. With ``config.squeeze_ratio`` set, each injection
    module's two global convs take the squeezed width Ci'.

    The TPM, injection and head are ``TopFormerSeg``'s modules under the same names (``tpm``,
    ``sim``, ``decode_head``), so those weights load from a ``TopFormerSeg`` state dict."""

    def __init__(
        self,
        config: Optional[MSCSAConfig] = None,
        blocks: Sequence[Sequence[float]] = MODEL_CFGS["topformer_tiny"]["blocks"],
        out_blocks: Sequence[int] = MODEL_CFGS["topformer_tiny"]["out_blocks"],
        stem_chs: int = 16,
        inject_chs: int = 128,
        head_dw: bool = True,
        inject_indices: Sequence[int] = (1, 2, 3),
        num_classes: int = 150,
        in_chans: int = 3,
        drop_rate: float = 0.1,
        variant: str = "topformer",
    ) -> None:
        """``config``: the MSCSA settings (its ``dense_pool_stride``, else ``pool_stride``, sets the
        pooled size). ``drop_rate``: the head's dropout (TopFormer's 0.1)."""
        super().__init__()
        config = config if config is not None else MSCSAConfig(dense_pool_stride=64)
        self.task = "segmentation"
        self.backbone_name = variant
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.inject_indices = list(inject_indices)
        self.tpm = TokenPyramidModule(blocks, out_blocks, stem_chs, in_chans)
        self.token_channels = list(self.tpm.out_channels)
        self.mscsa = MSCSA(self.token_channels, config, task="dense")
        self.config = self.mscsa.config
        self.split_channels = list(self.mscsa.split_channels)
        self.sim = nn.ModuleList()
        for i in self.inject_indices:
            sim = SemanticInjection(self.token_channels[i], inject_chs)
            if self.split_channels[i] != self.token_channels[i]:  # squeezed MSCSA parts
                sim.global_act = ConvNormAct(self.split_channels[i], inject_chs)
                sim.global_embedding = ConvNormAct(self.split_channels[i], inject_chs)
            self.sim.append(sim)
        self.decode_head = SegHead(inject_chs, num_classes, drop_rate, head_dw)
        self.num_features = self.head_hidden_size = inject_chs
        self.feature_info = [
            dict(num_chs=inject_chs, reduction=self.tpm.out_strides[i], module=f"sim.{n}")
            for n, i in enumerate(self.inject_indices)
        ]
        self.is_fused = False
        # TopFormer's own init for its parts; MSCSA keeps the initialisation its config names.
        for part in (self.tpm, self.sim, self.decode_head):
            _init_weights(part)
        self.pretrained_cfg = self.default_cfg = _cfg(
            num_classes=num_classes, input_size=(in_chans, 512, 512), pool_size=None, classifier="decode_head.cls",
            notes=("no weights are published: TopFormer + MSCSA for segmentation (Shang et al., Table 3)",),
        )

    @classmethod
    def from_variant(cls, variant: str, config: Optional[MSCSAConfig] = None, **kwargs: Any) -> "TopFormerSegMSCSA":
        """The model for a TopFormer variant of ``MODEL_CFGS`` (its token pyramid, injection width
        and head); SASE's settings there are not used. ``kwargs`` override the rest."""
        if variant not in MODEL_CFGS:
            raise ValueError(f"unknown TopFormer variant {variant!r}: choose one of {sorted(MODEL_CFGS)}")
        args = {k: v for k, v in MODEL_CFGS[variant].items() if k not in SASE_KEYS}
        return cls(config, **dict(args, variant=variant, **kwargs))

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The injected maps at strides 8, 16, 32 (``inject_chs`` channels each)."""
        tokens = self.tpm(x)
        parts = torch.split(self.mscsa(tokens), self.split_channels, dim=1)
        return [sim(tokens[i], parts[i]) for sim, i in zip(self.sim, self.inject_indices)]

    def forward_head(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decode_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, ceil(H/8), ceil(W/8)) for an input (B, in_chans, H, W)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.decode_head.cls

    # ------------------------------------------------------------------ inference helpers
    @torch.no_grad()
    def fuse(self) -> "TopFormerSegMSCSA":
        """Fold BN into the conv before it, in MSCSA and in the TopFormer parts (inference only:
        eval mode, running statistics); the outputs stay the same. The MSCSA blocks' pre-norm BNs
        stay, as in ``MSCSANet.fuse`` (no conv precedes them)."""
        self.eval()
        self.mscsa = self.mscsa.fuse() if isinstance(self.mscsa, Fusable) else fuse_modules(self.mscsa)
        _fold_conv_norm(self)
        self.is_fused = True
        return self

    def set_attn_impl(self, impl: str) -> None:
        self.mscsa.set_attn_impl(impl)

    def summary(self, input_size: Tuple[int, int] = (512, 512),
                stage_sizes: Optional[List[Tuple[int, int]]] = None) -> dict[str, Any]:
        """Token map sizes and widths, which stages receive an injection, the MSCSA grid and key
        scales, the logits' size and parameters per part. ``stage_sizes``: the token map sizes when the
        caller has observed them (``analysis.observe``); otherwise one token-pyramid pass finds them."""
        height, width = input_size
        sizes = stage_sizes
        if sizes is None:
            with torch.no_grad():
                was_training = self.training
                self.eval()
                sizes = [tuple(t.shape[-2:]) for t in self.tpm(torch.zeros(1, self.in_chans, height, width))]
                self.train(was_training)
        grid = pooled_size(sizes, self.mscsa.aggregation.pool_stride)
        scales = scale_sizes(*grid, strategy=self.config.downsample, use_msp=self.config.use_msp)
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return dict(
            backbone=self.backbone_name,
            task=self.task,
            input_size=[height, width],
            stages=[
                dict(stride=s, channels=c, squeezed_channels=sc, map_size=list(size), injected=i in self.inject_indices)
                for i, (s, c, sc, size) in enumerate(
                    zip(self.tpm.out_strides, self.token_channels, self.split_channels, sizes))
            ],
            mscsa_dim=self.mscsa.dim,
            mscsa_grid=list(grid),
            scale_grids=[list(s) for s in scales],
            tokens_per_scale=[h * w for h, w in scales],
            logits_size=list(sizes[self.inject_indices[0]]),
            params=dict(tpm=count(self.tpm), mscsa=count(self.mscsa), injection=count(self.sim),
                        head=count(self.decode_head), total=count(self)),
            config=self.config.to_dict(),
            notes=[
                "MSCSA replaces SASE; TopFormer's injection modules and light head are kept.",
                "The stride-4 part g1 of the MSCSA map is computed but not injected, as in TopFormer.",
                "Logits are at the stride-8 size; upsample them to the input for the loss.",
            ],
        )


# --------------------------------------------------------------------------- registration
def _cfg(**kwargs: Any) -> dict[str, Any]:
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


default_cfgs = generate_default_cfgs({"topformer_tiny": _cfg(), "topformer_base": _cfg()})


def _create_topformer(variant: str, pretrained: bool = False, task: str = "classification", **kwargs: Any):
    if pretrained:
        raise RuntimeError(f"no pretrained weights exist for {variant!r}; use pretrained=False")
    model_args = dict(MODEL_CFGS[variant])
    if task == "dense":
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return TopFormerSeg(**dict(model_args, **kwargs))
    if task != "classification":
        raise ValueError(f"task={task!r} is unknown: choose 'classification' or 'dense'")
    model_args.pop("inject_chs")
    model_args.pop("head_dw")
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        TopFormer,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


@register_model
def topformer_tiny(pretrained: bool = False, **kwargs: Any) -> TopFormer:
    """TopFormer-T: tokens (16, 32, 64, 96), SASE depth 4, 4 heads. ``task='dense'`` gives
    ``TopFormerSeg`` (ADE20K, 150 classes)."""
    return _create_topformer("topformer_tiny", pretrained, **kwargs)


@register_model
def topformer_base(pretrained: bool = False, **kwargs: Any) -> TopFormer:
    """TopFormer-B: tokens (32, 64, 128, 160), SASE depth 4, 8 heads. ``task='dense'`` gives
    ``TopFormerSeg`` (ADE20K, 150 classes)."""
    return _create_topformer("topformer_base", pretrained, **kwargs)
