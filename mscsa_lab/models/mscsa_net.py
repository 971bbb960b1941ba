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
from torch import nn

from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.models.backbones import StageFeatures
from mscsa_lab.models.layers import Fusable, fuse_modules
from mscsa_lab.models.mscsa import MSCSA, ClassificationHead, DenseFusion

__all__ = ["MSCSANet", "TASKS"]

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
        from mscsa_lab.models.mscsa import pooled_size, scale_sizes

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
