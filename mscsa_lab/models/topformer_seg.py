"""TopFormer for semantic segmentation (``TopFormerSeg``) and the MSCSA paper's Table 3 model, TopFormer
segmentation with MSCSA in place of its Scale-Aware Semantics Extractor (``TopFormerSegMSCSA``).
See ``mscsa_lab.models.topformer`` for the data flow.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mscsa_lab.models.config import MSCSAConfig
from mscsa_lab.models.layers import Fusable, bn_scale_shift, fuse_modules
from mscsa_lab.models.mscsa import MSCSA, pooled_size, scale_sizes
from mscsa_lab.models.topformer_blocks import (
    MODEL_CFGS,
    ConvNormAct,
    SemanticsExtractor,
    TokenPyramidModule,
    init_weights,
    pool_tokens,
    topformer_cfg,
)

__all__ = ["SemanticInjection", "SegHead", "TopFormerSeg", "TopFormerSegMSCSA", "SASE_KEYS"]

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
        init_weights(self)

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
            init_weights(part)
        self.pretrained_cfg = self.default_cfg = topformer_cfg(
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
