"""A fast inference path for MSCSA: the same function with fewer, larger kernels.

The paper blames MSCSA's runtime overhead on memory traffic in CSA and Intra-FFN. On top of
``fuse()`` (BN folded into convs) this path:

- computes Q, K0 and V0 with one 1x1 conv on X (their weights stacked), and each extra scale's K and V
  with one conv, instead of five separate projections;
- assembles K and V of all scales by concatenating flattened channel-first maps (views, one copy);
- folds the 1/sqrt(d) scaling into the query weights; on the CPU computes attention channel-first
  (``V softmax(Q^T K)^T``), which needs no transposed copy of the output and skips the CPU SDPA
  kernel's masking checks; on CUDA uses SDPA;
- folds the pre-norm BN in front of the FFN and the Intra-FFN into their first 1x1 convs (exact:
  a per-channel affine map followed by a 1x1 conv is a 1x1 conv); the BN in front of CSA stays,
  because the 3x3 down-sampling convs pad with zeros and folding would change the borders;
- runs the Intra-FFN's four depthwise convs as one depthwise conv over all stages' hidden channels.

``make_fast(model)`` returns a new inference-only model; the reference model is left untouched, so
saliency taps and training keep using the readable modules.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mscsa_lab.models.layers import ConvBN, bn_scale_shift, fuse_modules
from mscsa_lab.models.mscsa import FFN, CrossScaleAttention, IntraFFN, MSCSABlock

__all__ = ["FastCrossScaleAttention", "FastFFN", "FastIntraFFN", "FastMSCSABlock", "make_fast"]


def _as_conv(module: nn.Module) -> nn.Conv2d:
    """A plain Conv2d with bias for a (possibly unfused) ConvBN or Conv2d."""
    if isinstance(module, ConvBN):
        module = module.fuse()
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"expected a conv, got {type(module).__name__}")
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(module.out_channels, device=module.weight.device))
    return module


def _stack_1x1(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """One 1x1 conv computing several 1x1 convs of the same input (outputs concatenated)."""
    convs = [_as_conv(c) for c in convs]
    weight = torch.cat([c.weight for c in convs], 0)
    stacked = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(weight)
        stacked.bias.copy_(torch.cat([c.bias for c in convs], 0))
    return stacked


@torch.no_grad()
def _fold_input_bn(bn: nn.BatchNorm2d, conv: nn.Conv2d, channels: slice | None = None) -> nn.Conv2d:
    """conv(bn(x)) as one 1x1 conv; ``channels`` selects the slice of BN that feeds this conv."""
    conv = _as_conv(copy.deepcopy(conv))
    scale, shift = bn_scale_shift(bn)
    if channels is not None:
        scale, shift = scale[channels], shift[channels]
    weight = conv.weight  # out, in, 1, 1
    conv.bias.add_((weight[:, :, 0, 0] * shift[None, :]).sum(1))
    weight.mul_(scale[None, :, None, None])
    return conv


class FastCrossScaleAttention(nn.Module):
    """Inference-only CSA with stacked projections; numerically the reference layer."""

    def __init__(self, layer: CrossScaleAttention) -> None:
        super().__init__()
        layer = copy.deepcopy(layer).eval()
        self.num_heads, self.key_dim, self.value_dim = layer.num_heads, layer.key_dim, layer.value_dim
        self.downsample = layer.downsample
        heads = layer.num_heads
        self.qk_chs, self.v_chs = heads * layer.key_dim, heads * layer.value_dim
        self.qkv0 = _stack_1x1([layer.query, layer.key_proj[0], layer.value_proj[0]])
        with torch.no_grad():  # fold 1/sqrt(d) into the query rows: one multiply fewer per step
            self.qkv0.weight[: self.qk_chs].mul_(layer.scale)
            self.qkv0.bias[: self.qk_chs].mul_(layer.scale)
        self.downsamplers = nn.ModuleList([_as_conv(d) if isinstance(d, ConvBN) else d
                                           for d in list(layer.scale_downsamplers)[1:]])
        self.kv = nn.ModuleList([_stack_1x1([k, v]) for k, v in zip(list(layer.key_proj)[1:], list(layer.value_proj)[1:])])
        self.conv_path = layer.conv_path
        self.proj = _as_conv(layer.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        heads, qk, v_chs = self.num_heads, self.qk_chs, self.v_chs
        q, k0, v0 = self.qkv0(x).split([qk, qk, v_chs], dim=1)
        keys, values = [k0.flatten(2)], [v0.flatten(2)]
        source = x
        for index, (downsampler, kv) in enumerate(zip(self.downsamplers, self.kv)):
            scaled = downsampler(source if (self.downsample == "cascade" and index == 1) else x)
            source = scaled
            k, v = kv(scaled).flatten(2).split([qk, v_chs], dim=1)
            keys.append(k)
            values.append(v)
        k = torch.cat(keys, dim=2) if len(keys) > 1 else keys[0]
        v = torch.cat(values, dim=2) if len(values) > 1 else values[0]
        q = q.reshape(batch, heads, self.key_dim, height * width)
        k = k.reshape(batch, heads, self.key_dim, -1)
        v = v.reshape(batch, heads, self.value_dim, -1)
        if x.is_cuda:
            out = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), scale=1.0)
            out = out.transpose(-2, -1).reshape(batch, v_chs, height, width)
        else:
            # Channel-first attention: (V A^T) lands directly in the B, heads*dv, H, W layout, and
            # the CPU's SDPA spends more time checking for masked rows than multiplying here.
            attn = torch.softmax(q.transpose(-2, -1) @ k, dim=-1)
            out = (v @ attn.transpose(-2, -1)).reshape(batch, v_chs, height, width)
        if self.conv_path is not None:
            out = out + self.conv_path(v0)
        return self.proj(F.hardswish(out))


class FastFFN(nn.Module):
    """FFN with the preceding pre-norm BN folded into its first 1x1 conv."""

    def __init__(self, ffn: FFN, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.fc1 = _fold_input_bn(norm, _as_conv(copy.deepcopy(ffn.fc1)))
        self.dwconv = _as_conv(copy.deepcopy(ffn.dwconv))
        self.act = copy.deepcopy(ffn.act)
        self.fc2 = _as_conv(copy.deepcopy(ffn.fc2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class FastIntraFFN(nn.Module):
    """Intra-FFN with the pre-norm BN folded in and one depthwise conv for all stages."""

    def __init__(self, intra: IntraFFN, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.split_channels = list(intra.split_channels)
        starts = [sum(self.split_channels[:i]) for i in range(len(self.split_channels))]
        self.fc1 = nn.ModuleList([
            _fold_input_bn(norm, _as_conv(copy.deepcopy(f.fc1)), slice(s, s + c))
            for f, s, c in zip(intra.stage_ffns, starts, self.split_channels)
        ])
        dws = [_as_conv(copy.deepcopy(f.dwconv)) for f in intra.stage_ffns]
        self.hidden_channels = [d.out_channels for d in dws]
        total = sum(self.hidden_channels)
        self.dwconv = nn.Conv2d(total, total, 3, 1, 1, groups=total, device=dws[0].weight.device)
        with torch.no_grad():
            self.dwconv.weight.copy_(torch.cat([d.weight for d in dws], 0))
            self.dwconv.bias.copy_(torch.cat([d.bias for d in dws], 0))
        self.act = copy.deepcopy(intra.stage_ffns[0].act)
        self.fc2 = nn.ModuleList([_as_conv(copy.deepcopy(f.fc2)) for f in intra.stage_ffns])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.split_channels, dim=1)
        hidden = torch.cat([fc1(part) for fc1, part in zip(self.fc1, parts)], dim=1)
        hidden = self.act(self.dwconv(hidden)).split(self.hidden_channels, dim=1)
        return torch.cat([fc2(h) for fc2, h in zip(self.fc2, hidden)], dim=1)


class FastMSCSABlock(nn.Module):
    def __init__(self, block: MSCSABlock) -> None:
        super().__init__()
        self.norm1 = copy.deepcopy(block.norm1)
        self.attn1 = FastCrossScaleAttention(block.attn1)
        if isinstance(block.intra_ffn, IntraFFN):
            self.intra_ffn: nn.Module = FastIntraFFN(block.intra_ffn, block.norm2)
        else:
            self.intra_ffn = FastFFN(block.intra_ffn, block.norm2)
        self.norm3 = copy.deepcopy(block.norm3)
        self.attn2 = FastCrossScaleAttention(block.attn2)
        self.ffn = FastFFN(block.ffn, block.norm4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.intra_ffn(x)
        x = x + self.attn2(self.norm3(x))
        return x + self.ffn(x)


@torch.no_grad()
def make_fast(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An inference-only copy of a backbone+MSCSA model (or an ``MSCSA`` module) on the fast path."""
    fast = copy.deepcopy(model).eval()
    mscsa = getattr(fast, "mscsa", fast)
    mscsa.blocks = nn.Sequential(*[FastMSCSABlock(block) for block in mscsa.blocks])
    if hasattr(fast, "fuse"):
        fast.fuse()  # folds the remaining ConvBN pairs (aggregation, head, fusion)
    else:
        fuse_modules(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.is_fast = True
    return fast
