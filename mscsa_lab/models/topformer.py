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

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._registry import generate_default_cfgs
from torch import nn

# The building blocks and the segmentation models live in their own modules; importing them from
# here keeps working.
from mscsa_lab.models.topformer_blocks import (  # noqa: F401
    FFN,
    MODEL_CFGS,
    Attention,
    ConvNormAct,
    InvertedResidual,
    SemanticsBlock,
    SemanticsExtractor,
    TokenPyramidModule,
    init_weights,
    pool_tokens,
    topformer_cfg,
)
from mscsa_lab.models.topformer_seg import SemanticInjection, SegHead, TopFormerSeg, TopFormerSegMSCSA  # noqa: F401

__all__ = ["TopFormer", "TopFormerSeg", "TopFormerSegMSCSA", "TokenPyramidModule", "SemanticsExtractor", "MODEL_CFGS"]


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
        init_weights(self)

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
        take_indices, max_index = feature_take_indices(len(self.tpm.out_blocks), indices)
        # SASE needs all four token maps, so blocks past the last tap are skipped only when the
        # final features are not wanted (and not in TorchScript, which cannot slice by a variable).
        if torch.jit.is_scripting() or not intermediates_only:
            blocks = self.tpm.blocks
        else:
            blocks = self.tpm.blocks[: self.tpm.out_blocks[max_index] + 1]
        tokens: List[torch.Tensor] = []
        intermediates: List[torch.Tensor] = []
        x = self.tpm.stem(x)
        for index, block in enumerate(blocks):
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


# --------------------------------------------------------------------------- registration
default_cfgs = generate_default_cfgs({"topformer_tiny": topformer_cfg(), "topformer_base": topformer_cfg()})


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
