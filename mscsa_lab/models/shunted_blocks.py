"""The building blocks of the Shunted Transformer (``mscsa_lab.models.shunted``): stem, patch
embeddings, shunted self-attention with multi-scale token aggregation, the detail-specific
feed-forward, blocks and stages. Written from the paper (Ren et al., CVPR 2022).

Every block scripts (TorchScript) and traces (torch.fx): padding is computed with arithmetic only,
and each module is called in the forward that owns it, never passed to a helper.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from torch import nn

__all__ = ["Stem", "OverlapPatchEmbed", "TokenAggregation", "ShuntedAttention", "DetailFeedForward", "ShuntedBlock",
           "ShuntedStage"]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map on the right and bottom so that H and W are multiples of ``multiple``.
    The padding is computed with arithmetic only (no branch on the size), so the function traces."""
    if multiple <= 1:
        return x
    pad_h = (multiple - x.shape[-2] % multiple) % multiple
    pad_w = (multiple - x.shape[-1] % multiple) % multiple
    return F.pad(x, [0, pad_w, 0, pad_h])


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
            self.kv = self.local = None
        else:
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
            self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.agg1 = self.agg2 = self.kv1 = self.kv2 = self.local1 = self.local2 = None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, kv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """A K/V projection's output (B, N, 2 * heads * head_dim) as K and V, each (B, heads, N, head_dim)."""
        batch, length = kv.shape[0], kv.shape[1]
        k, v = kv.reshape(batch, length, 2, num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    @staticmethod
    def _value_map(v: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """V (B, heads, N, head_dim) as the (B, heads * head_dim, H, W) map its local enhancement convolves."""
        return v.transpose(2, 3).reshape(v.shape[0], v.shape[1] * v.shape[3], size[0], size[1])

    @staticmethod
    def _add_local(v: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """V plus its local enhancement (a map, back in V's token layout)."""
        return v + local.reshape(v.shape[0], v.shape[1], v.shape[3], v.shape[2]).transpose(2, 3)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        batch, length, channels = x.shape
        q = self.q(x).reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        # Each module is called here, not passed to a helper, and the branch tests a module that is
        # None or not (resolved when scripted), so that the forward scripts (TorchScript).
        if self.kv is None:  # sr_ratio > 1: two head groups
            half_heads = self.num_heads // 2
            x1, size1 = self.agg1(x, size)
            x2, size2 = self.agg2(x, size)
            k1, v1 = self._split_heads(self.kv1(x1), half_heads)
            k2, v2 = self._split_heads(self.kv2(x2), half_heads)
            v1 = self._add_local(v1, self.local1(self._value_map(v1, size1)))
            v2 = self._add_local(v2, self.local2(self._value_map(v2, size2)))
            out = torch.cat([
                self._attend(q[:, :half_heads], k1, v1),
                self._attend(q[:, half_heads:], k2, v2),
            ], dim=1)
        else:
            k, v = self._split_heads(self.kv(x), self.num_heads)
            v = self._add_local(v, self.local(self._value_map(v, size)))
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
