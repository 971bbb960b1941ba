"""Backbone + MSCSA models, and their timm registrations.

``MSCSANet`` attaches MSCSA in parallel to an unchanged timm backbone (Table 7's mode for ResNet,
PVTv2, P2T, Shunted, Swin and ConvNeXt). For classification it returns logits from the MSCSA head
(Fig. 4); for dense prediction the four backbone maps with MSCSA's injections fused in (Fig. 5).

    >>> import timm, mscsa_lab
    >>> model = timm.create_model("pvt_v2_b1_mscsa", num_classes=10)
    >>> dense = timm.create_model("resnet50_mscsa", task="dense")
"""
from __future__ import annotations

import os
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from ..config import ConfigError, MSCSAConfig
from ..profiles import Profile, load_profile
from .backbones import StageFeatures
from .layers import Fusable, fuse_modules
from .mscsa import MSCSA, ClassificationHead, DenseFusion

__all__ = ["MSCSANet", "create_mscsa_model", "TASKS"]

TASKS = ("classification", "dense")


class MSCSANet(nn.Module):
    """A timm backbone's four stages -> MSCSA -> classification head or dense fusion."""

    def __init__(
        self,
        backbone: str,
        config: MSCSAConfig | dict[str, Any] | None = None,
        task: str = "classification",
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        img_size: int | tuple[int, int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task={task!r} is unknown: choose one of {list(TASKS)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be a whole number >= 0, got {num_classes!r}")
        if isinstance(config, dict):
            config = MSCSAConfig.from_dict(config)
        config = config or MSCSAConfig()
        self.task = task
        self.config = config
        self.backbone = StageFeatures(backbone, pretrained, pretrained_file, img_size, **(backbone_kwargs or {}))
        self.mscsa = MSCSA(self.backbone.channels, config, task)
        self.num_classes = num_classes if task == "classification" else 0
        if task == "classification":
            self.head: nn.Module | None = ClassificationHead(self.mscsa.dim, num_classes, drop_rate)
            self.fusion: nn.Module | None = None
        else:
            self.head = None
            self.fusion = DenseFusion(self.mscsa.split_channels, self.backbone.channels, config.fusion_order)
        self.feature_info = [
            dict(num_chs=c, reduction=s, module=f"fusion.{i}" if self.fusion is not None else f"backbone.{i}")
            for i, (c, s) in enumerate(zip(self.backbone.channels, self.backbone.strides))
        ]
        self.is_fused = False

    # -------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four backbone maps and the MSCSA multi-stage map."""
        stages = self.backbone(x)
        return stages, self.mscsa(stages)

    def forward_head(self, stages: list[torch.Tensor], mscsa_map: torch.Tensor, pre_logits: bool = False):
        if self.head is not None:
            return self.head(mscsa_map, pre_logits=pre_logits)
        return self.fusion(mscsa_map, stages)

    def forward(self, x: torch.Tensor):
        stages, mscsa_map = self.forward_features(x)
        return self.forward_head(stages, mscsa_map)

    # -------------------------------------------------------------- inference helpers
    @torch.no_grad()
    def fuse(self) -> "MSCSANet":
        """Fold BN into the preceding convs of MSCSA, the head and the fusion (inference only).
        The backbone is left as timm built it."""
        self.eval()
        for name in ("mscsa", "head", "fusion"):
            part = getattr(self, name)
            if part is not None:
                setattr(self, name, part.fuse() if isinstance(part, Fusable) else fuse_modules(part))
        self.is_fused = True
        return self

    def set_attn_impl(self, impl: str) -> None:
        if impl not in ("sdpa", "explicit"):
            raise ConfigError(f"attn_impl={impl!r} is unknown: choose 'sdpa' or 'explicit'")
        self.mscsa.set_attn_impl(impl)

    def get_classifier(self) -> nn.Module | None:
        return None if self.head is None else self.head.fc

    def summary(self, input_size: tuple[int, int] = (224, 224)) -> dict[str, Any]:
        """Architecture facts a user wants before profiling: stages, widths, token counts per scale."""
        from .mscsa import pooled_size, scale_sizes

        height, width = input_size
        with torch.no_grad():
            was_training = self.training
            self.eval()
            stage_sizes = [tuple(f.shape[-2:]) for f in self.backbone(torch.zeros(1, 3, height, width))]
            self.train(was_training)
        grid = pooled_size(stage_sizes, self.mscsa.aggregation.pool_stride)
        scales = scale_sizes(*grid, strategy=self.config.downsample, use_msp=self.config.use_msp)
        count = lambda module: sum(p.numel() for p in module.parameters()) if module is not None else 0  # noqa: E731
        return dict(
            backbone=self.backbone.name,
            task=self.task,
            input_size=list(input_size),
            stages=[
                dict(stride=s, channels=c, squeezed_channels=sc, map_size=list(size))
                for s, c, sc, size in zip(self.backbone.strides, self.backbone.channels, self.mscsa.split_channels, stage_sizes)
            ],
            mscsa_dim=self.mscsa.dim,
            mscsa_grid=list(grid),
            scale_grids=[list(s) for s in scales],
            tokens_per_scale=[h * w for h, w in scales],
            params=dict(
                backbone=count(self.backbone),
                mscsa=count(self.mscsa),
                head=count(self.head),
                fusion=count(self.fusion),
                total=count(self),
            ),
            config=self.config.to_dict(),
        )


def create_mscsa_model(
    profile: str | Profile | None = None,
    *,
    backbone: str | None = None,
    config: MSCSAConfig | dict[str, Any] | None = None,
    task: str = "classification",
    num_classes: int = 1000,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    drop_rate: float = 0.0,
    **overrides: Any,
) -> MSCSANet:
    """Build backbone+MSCSA from a Table 7 profile, or from any timm backbone and a custom config.

    ``overrides`` change single MSCSA settings of the profile (``depth=2``, ``squeeze_ratio="1/2"``).
    ``img_size`` is the input size for backbones built for one size (Swin); others ignore it.
    """
    if profile is not None:
        profile = load_profile(profile) if isinstance(profile, str) else profile
        profile.require_available()
        base = profile.config
        backbone = backbone or profile.backbone
    else:
        if backbone is None:
            raise ConfigError("give a profile name or a backbone (any timm model with four stages)")
        base = MSCSAConfig()
    if isinstance(config, dict):
        base = base.replace(**config)
    elif isinstance(config, MSCSAConfig):
        base = config
    if overrides:
        base = base.replace(**overrides)
    return MSCSANet(
        backbone,
        base,
        task=task,
        num_classes=num_classes,
        drop_rate=drop_rate,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        img_size=img_size,
        backbone_kwargs=backbone_kwargs,
    )


def _create_registered(profile_name: str, pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    # timm's factory passes these for every model; our weights come from the backbone's own cfg.
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return create_mscsa_model(profile_name, pretrained=pretrained, **kwargs)


@register_model
def resnet18_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("resnet18", pretrained, **kwargs)


@register_model
def resnet50_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("resnet50", pretrained, **kwargs)


@register_model
def pvt_v2_b0_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("pvt_v2_b0", pretrained, **kwargs)


@register_model
def pvt_v2_b1_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("pvt_v2_b1", pretrained, **kwargs)


@register_model
def pvt_v2_b2_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("pvt_v2_b2", pretrained, **kwargs)


@register_model
def swin_tiny_patch4_window7_224_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("swin_tiny", pretrained, **kwargs)


@register_model
def convnext_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("convnext_tiny", pretrained, **kwargs)


@register_model
def coat_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    """CoaT Tiny's serial blocks with MSCSA in place of its parallel blocks."""
    return _create_registered("coat_tiny", pretrained, **kwargs)


@register_model
def coat_small_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    """CoaT Small's serial blocks with MSCSA in place of its parallel blocks."""
    return _create_registered("coat_small", pretrained, **kwargs)


@register_model
def topformer_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    """TopFormer-T's token pyramid with MSCSA in place of its Scale-Aware Semantics Extractor."""
    return _create_registered("topformer_tiny", pretrained, **kwargs)


@register_model
def topformer_base_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    """TopFormer-B's token pyramid with MSCSA in place of its Scale-Aware Semantics Extractor."""
    return _create_registered("topformer_base", pretrained, **kwargs)


@register_model
def p2t_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("p2t_tiny", pretrained, **kwargs)


@register_model
def shunted_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> MSCSANet:
    return _create_registered("shunted_tiny", pretrained, **kwargs)
