r"""Multi-Stage Cross-Scale Attention (MSCSA), written from the paper and ``docs/DESIGN.md`` (§1-§4).

Shang et al., "Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention" (2023).

Data flow (all tensors BCHW, no CLS token)::

    F1..F4 --avg-pool to 1/s--> [squeeze 1x1 conv+BN] --concat--> X (C = sum Ci')
    X --depth x MSCSABlock--> X --> ClassificationHead (BN, GAP, Linear)  [Fig. 4]
                                \-> DenseFusion: four maps fused into F1..F4 [Fig. 5]

The per-scale key/value projections are separate modules (``key_proj[i]``, ``value_proj[i]``) so
that hook-based attribution (captum) sees each scale's call, and the attention itself can be read
back through ``CrossScaleAttention.last_attention`` when ``store_attention`` is set (eager mode).

The modules script (TorchScript) and trace (torch.fx) as written: forwards take plain lists, sizes
are computed with integer arithmetic that works on traced values, and every branch depends on
settings fixed at construction, never on a tensor's shape. The head and the dense fusion live in
``mscsa_lab.models.heads`` (re-exported here).
"""
from __future__ import annotations

import contextlib

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from mscsa_lab.models.config import MSCSAConfig
from mscsa_lab.models.heads import GLOBAL_POOLS, ClassificationHead, DenseFusion, resolve_global_pool
from mscsa_lab.models.layers import ConvBN, make_activation, trunc_normal_fan_in_

__all__ = [
    "CrossScaleAttention",
    "FFN",
    "IntraFFN",
    "MSCSABlock",
    "MultiStageAggregation",
    "MSCSA",
    "ClassificationHead",
    "DenseFusion",
    "scale_sizes",
    "resolve_global_pool",
    "GLOBAL_POOLS",
]


def scale_sizes(height: int, width: int, strategy: str = "dwconv", use_msp: bool = True) -> list[tuple[int, int]]:
    """Token grid of each key/value scale for an ``height x width`` multi-stage map.

    The default follows the paper's Eq. 3: h1 = floor((h-1)/2 + 1), h2 = floor((h-1)/3 + 1).
    """
    sizes = [(height, width)]
    if not use_msp:
        return sizes
    half = ((height - 1) // 2 + 1, (width - 1) // 2 + 1)
    sizes.append(half)
    if strategy == "single":
        return sizes
    if strategy == "cascade":
        sizes.append(((half[0] - 1) // 2 + 1, (half[1] - 1) // 2 + 1))
    else:
        sizes.append(((height - 1) // 3 + 1, (width - 1) // 3 + 1))
    return sizes


class CrossScaleAttention(nn.Module):
    """Cross-Scale Attention: queries at full resolution attend to keys/values of three scales.

    Q = X Wq; for each scale i, Xi is X (i=0) or a down-sampled X, Ki = Xi Wk_i, Vi = Xi Wv_i;
    Attn = softmax(Q [K0;K1;K2]^T / sqrt(d)) [V0;V1;V2]; plus the parallel convolution path
    DWConv3x3(Hardswish(V0)); then Hardswish and the 1x1 conv+BN output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        key_dim: int = 32,
        attn_ratio: float = 2.0,
        use_pcp: bool = True,
        use_msp: bool = True,
        downsample: str = "dwconv",
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = int(round(attn_ratio * key_dim))
        self.scale = key_dim ** -0.5
        self.use_pcp = use_pcp
        self.use_msp = use_msp
        self.downsample = downsample
        self.attn_impl = attn_impl
        self.store_attention = False
        self.last_attention = None  # the softmax weights of the last call, when store_attention is set

        qk_chs = num_heads * key_dim
        v_chs = num_heads * self.value_dim
        self.query = ConvBN(dim, qk_chs)
        self.scale_downsamplers = nn.ModuleList(self._make_downsamplers(dim, downsample, use_msp))
        num_scales = len(self.scale_downsamplers)
        self.key_proj = nn.ModuleList([ConvBN(dim, qk_chs) for _ in range(num_scales)])
        self.value_proj = nn.ModuleList([ConvBN(dim, v_chs) for _ in range(num_scales)])
        self.conv_path = (
            nn.Sequential(nn.Hardswish(), nn.Conv2d(v_chs, v_chs, 3, 1, 1, groups=v_chs))
            if use_pcp
            else None
        )
        self.out_act = nn.Hardswish()
        self.proj = ConvBN(v_chs, dim)

    @staticmethod
    def _make_downsamplers(dim: int, strategy: str, use_msp: bool) -> list[nn.Module]:
        """Modules producing X0, X1, X2 (X0 is the identity). The cascade's X2 module is applied
        to X1 rather than to X; ``forward`` handles that ordering."""
        scales: list[nn.Module] = [nn.Identity()]
        if not use_msp:
            return scales
        if strategy == "avgpool":
            scales.append(nn.AvgPool2d(3, 2, 1, count_include_pad=False))
            scales.append(nn.AvgPool2d(3, 3, 1, count_include_pad=False))
        elif strategy in ("dwconv", "single"):
            scales.append(ConvBN(dim, dim, 3, 2, 1, groups=dim))
            if strategy == "dwconv":
                scales.append(ConvBN(dim, dim, 3, 3, 1, groups=dim))
        elif strategy == "cascade":
            scales.append(ConvBN(dim, dim, 3, 2, 1, groups=dim))
            scales.append(ConvBN(dim, dim, 3, 2, 1, groups=dim))
        else:
            raise ValueError(f"unknown downsample strategy {strategy!r}")
        return scales

    @property
    def num_scales(self) -> int:
        return len(self.scale_downsamplers)

    def scale_inputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """X0, X1, X2 for this layer's strategy."""
        inputs = [x]
        for index, downsampler in enumerate(self.scale_downsamplers):
            if index > 0:
                source = inputs[-1] if (self.downsample == "cascade" and index == 2) else x
                inputs.append(downsampler(source))
        return inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        heads = self.num_heads
        q = self.query(x).reshape(batch, heads, self.key_dim, height * width).transpose(-2, -1)
        scale_inputs = self.scale_inputs(x)
        keys: List[torch.Tensor] = []
        values: List[torch.Tensor] = []
        for index, (key_proj, value_proj) in enumerate(zip(self.key_proj, self.value_proj)):
            keys.append(key_proj(scale_inputs[index]).flatten(2).reshape(batch, heads, self.key_dim, -1))
            values.append(value_proj(scale_inputs[index]))
        # The parallel conv path works on V0 as a map; attention on every scale's V as tokens.
        value_full_res = values[0]
        k = torch.cat(keys, dim=-1).transpose(-2, -1)  # B, heads, M, d
        v = torch.cat([v.flatten(2).reshape(batch, heads, self.value_dim, -1) for v in values], dim=-1)
        v = v.transpose(-2, -1)  # B, heads, M, dv

        if self.attn_impl == "explicit" or self.store_attention:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            if not torch.jit.is_scripting():
                self.last_attention = attn.detach() if self.store_attention else None
            out = attn @ v
        else:
            if not torch.jit.is_scripting():
                self.last_attention = None
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-2, -1).reshape(batch, heads * self.value_dim, height, width)
        if self.conv_path is not None:
            out = out + self.conv_path(value_full_res)
        return self.proj(self.out_act(out))


class FFN(nn.Module):
    """1x1 conv+BN (C -> rC), 3x3 depthwise conv+BN, activation, 1x1 conv+BN (rC -> C)."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act_layer: str = "hardswish") -> None:
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.fc1 = ConvBN(dim, hidden)
        self.dwconv = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = make_activation(act_layer)
        self.fc2 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class IntraFFN(nn.Module):
    """One FFN per stage's channel slice (C1'..C4'), concatenated back: no cross-stage 1x1 mixing."""

    def __init__(self, split_channels: Sequence[int], mlp_ratio: float = 2.0, act_layer: str = "hardswish") -> None:
        super().__init__()
        self.split_channels = list(split_channels)
        self.stage_ffns = nn.ModuleList([FFN(c, mlp_ratio, act_layer) for c in self.split_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.split_channels, dim=1)
        return torch.cat([ffn(parts[index]) for index, ffn in enumerate(self.stage_ffns)], dim=1)


class MSCSABlock(nn.Module):
    """X += CSA(BN(X)); X += IntraFFN(BN(X)); X += CSA(BN(X)); X += FFN(BN(X)) — pre-norm BN,
    drop path on every residual branch. With ``use_intra_ffn=False`` the Intra-FFN becomes an FFN."""

    def __init__(
        self,
        split_channels: Sequence[int],
        num_heads: int = 8,
        key_dim: int = 32,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        act_layer: str = "hardswish",
        drop_path: float = 0.0,
        use_pcp: bool = True,
        use_intra_ffn: bool = True,
        use_msp: bool = True,
        downsample: str = "dwconv",
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        dim = sum(split_channels)

        def attention() -> CrossScaleAttention:
            return CrossScaleAttention(
                dim, num_heads, key_dim, attn_ratio, use_pcp, use_msp, downsample, attn_impl
            )

        self.norm1 = nn.BatchNorm2d(dim)
        self.attn1 = attention()
        self.norm2 = nn.BatchNorm2d(dim)
        self.intra_ffn = (
            IntraFFN(split_channels, mlp_ratio, act_layer) if use_intra_ffn else FFN(dim, mlp_ratio, act_layer)
        )
        self.norm3 = nn.BatchNorm2d(dim)
        self.attn2 = attention()
        self.norm4 = nn.BatchNorm2d(dim)
        self.ffn = FFN(dim, mlp_ratio, act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn1(self.norm1(x)))
        x = x + self.drop_path(self.intra_ffn(self.norm2(x)))
        x = x + self.drop_path(self.attn2(self.norm3(x)))
        x = x + self.drop_path(self.ffn(self.norm4(x)))
        return x


STAGE_STRIDES = (4, 8, 16, 32)


def pooled_size(stage_sizes: Sequence[Sequence[int]], pool_stride: int) -> Tuple[int, int]:
    """Size of the multi-stage map at output stride ``pool_stride``.

    For strides the backbone has (4..32) it is that stage's own map size, so "1/32" means exactly
    the stride-32 map whatever the backbone's rounding; coarser strides are derived from the
    stride-32 map by ceiling division (e.g. 1/64 = ceil(size at 1/32 / 2)). Integer arithmetic
    only, so sizes traced by torch.fx work too.
    """
    stage, factor = _pool_source(pool_stride)
    height, width = stage_sizes[stage][0], stage_sizes[stage][1]
    return (height + factor - 1) // factor, (width + factor - 1) // factor


def _pool_source(pool_stride: int) -> Tuple[int, int]:
    """(index of the stage whose map size the pooled size derives from, ceiling-division factor)."""
    if pool_stride in STAGE_STRIDES:
        return STAGE_STRIDES.index(pool_stride), 1
    if pool_stride > 32:
        return 3, pool_stride // 32
    return 0, 1


class MultiStageAggregation(nn.Module):
    """Average-pool the four stage maps to one size, optionally squeeze each (1x1 conv+BN), concat."""

    def __init__(
        self,
        in_channels: Sequence[int],
        squeeze_ratio: float | None = None,
        pool_stride: int = 32,
        upsample_mode: str = "bilinear",
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.pool_stride = pool_stride
        self.upsample_mode = upsample_mode
        self.source_stage, self.source_factor = _pool_source(pool_stride)
        # A stage whose stride is finer than (or equal to) the pooled map's is average-pooled down to
        # it; a coarser one (the stride-32 map when pooling to 1/16, as for CoaT) is upsampled, which
        # average pooling cannot do. Fixed per stage, so tracing sees no branch on sizes.
        self.upsampled = [stride > pool_stride for stride in STAGE_STRIDES[: len(self.in_channels)]]
        if squeeze_ratio is None:
            self.out_channels = list(in_channels)
            self.squeeze = None
        else:
            self.out_channels = [int(round(c * squeeze_ratio)) for c in in_channels]
            self.squeeze = nn.ModuleList([ConvBN(c, o) for c, o in zip(in_channels, self.out_channels)])

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        source, factor = features[self.source_stage], self.source_factor
        size = [(source.shape[-2] + factor - 1) // factor, (source.shape[-1] + factor - 1) // factor]
        pooled: List[torch.Tensor] = []
        for index, feature in enumerate(features):
            if index == self.source_stage and factor == 1:
                pooled.append(feature)  # already the pooled map's size
            elif not self.upsampled[index]:
                pooled.append(F.adaptive_avg_pool2d(feature, size))
            elif self.upsample_mode == "nearest":
                pooled.append(F.interpolate(feature, size=size, mode="nearest"))
            else:
                pooled.append(F.interpolate(feature, size=size, mode="bilinear", align_corners=False))
        if self.squeeze is not None:
            squeezed: List[torch.Tensor] = []
            for index, squeeze in enumerate(self.squeeze):
                squeezed.append(squeeze(pooled[index]))
            pooled = squeezed
        return torch.cat(pooled, dim=1)


@torch.no_grad()
def init_zero_residual(module: nn.Module) -> None:
    """LeViT / TopFormer initialisation: every conv truncated-normal (std 1/sqrt(fan-in), cut at
    2 std, so a fresh model's activations keep their scale in eval mode too), BN at weight 1 /
    bias 0, except the BN closing each residual branch (CSA output projection, FFN and Intra-FFN
    last conv), which starts at 0: a fresh MSCSA block is the identity and training grows each
    branch from nothing instead of adding noise to the backbone's features.

    All conv weights are drawn together (``trunc_normal_fan_in_``): drawing them one by one, with
    ``nn.init.trunc_normal_`` or even timm's faster ``trunc_normal_``, used to take most of the time of
    building a whole model."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    trunc_normal_fan_in_([conv.weight for conv in convs])
    for conv in convs:
        if conv.bias is not None:
            conv.bias.zero_()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.weight.fill_(1.0)
            m.bias.zero_()
    for m in module.modules():
        closing = m.proj if isinstance(m, CrossScaleAttention) else m.fc2 if isinstance(m, FFN) else None
        if closing is not None:
            closing.bn.weight.zero_()


class MSCSA(nn.Module):
    """The add-on module: aggregation followed by ``depth`` MSCSA blocks. Returns the multi-stage
    map X (B, sum Ci', h, w); ``split_channels`` tells where each stage's part lies."""

    def __init__(self, in_channels: Sequence[int], config: MSCSAConfig | None = None, task: str = "classification") -> None:
        super().__init__()
        config = (config or MSCSAConfig()).validate(tuple(in_channels))
        if len(in_channels) != 4:
            raise ValueError(f"MSCSA takes four stage maps (strides 4..32), got {len(in_channels)} widths")
        self.config = config
        # With the zero-residual init every weight and statistic is set below, so the layers are first made on
        # the meta device (no memory, no default init) and given memory once: building drew each conv's weights
        # twice, and the default draw was most of the time an MSCSA took to build.
        target = torch.get_default_device()
        deferred = config.weight_init == "zero_residual" and target.type != "meta"
        with torch.device("meta") if deferred else contextlib.nullcontext():
            self._make_layers(in_channels, config, task)
        if deferred:
            self.to_empty(device=target)
        if config.weight_init == "zero_residual":
            init_zero_residual(self)

    def _make_layers(self, in_channels: Sequence[int], config: MSCSAConfig, task: str) -> None:
        self.aggregation = MultiStageAggregation(
            in_channels, config.squeeze_ratio, config.pool_stride_for(task), config.upsample_mode
        )
        self.split_channels = self.aggregation.out_channels
        self.dim = sum(self.split_channels)
        # Block i of n drops with probability drop_path * i / n, so depth 1 still uses drop_path.
        drop_rates = [config.drop_path * (i + 1) / config.depth for i in range(config.depth)]
        self.blocks = nn.Sequential(
            *[
                MSCSABlock(
                    self.split_channels,
                    num_heads=config.num_heads,
                    key_dim=config.key_dim,
                    attn_ratio=config.attn_ratio,
                    mlp_ratio=config.ffn_ratio,
                    act_layer=config.act_layer,
                    drop_path=rate,
                    use_pcp=config.use_pcp,
                    use_intra_ffn=config.use_intra_ffn,
                    use_msp=config.use_msp,
                    downsample=config.downsample,
                    attn_impl=config.attn_impl,
                )
                for rate in drop_rates
            ]
        )

    def attention_layers(self) -> list[CrossScaleAttention]:
        return [m for m in self.modules() if isinstance(m, CrossScaleAttention)]

    def set_attn_impl(self, impl: str) -> None:
        """Switch every CSA layer between "sdpa" and "explicit" (same weights, same numbers)."""
        for layer in self.attention_layers():
            layer.attn_impl = impl

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = self.aggregation(features)
        if not torch.jit.is_scripting():
            # The check reads sizes as numbers, which symbolic tracing and torch.export/compile cannot.
            if self.training and not is_fx_symbolic_tracing() and not torch.compiler.is_compiling():
                self._check_batch_statistics(x)
        return self.blocks(x)

    def _check_batch_statistics(self, x: torch.Tensor) -> None:
        """BatchNorm needs two values per channel in training; say so instead of failing deep inside."""
        config = self.config
        smallest = min(h * w for h, w in scale_sizes(*x.shape[-2:], config.downsample, config.use_msp))
        if x.shape[0] * smallest < 2:
            raise ValueError(
                f"training MSCSA on batch {x.shape[0]} with a {x.shape[-2]}x{x.shape[-1]} multi-stage map leaves "
                f"a key/value scale of one pixel, too few for BatchNorm statistics: use a batch of 2 or more, a "
                f"larger input, or eval mode"
            )
