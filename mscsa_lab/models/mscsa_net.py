"""Backbone + MSCSA models, with timm's model contract.

``MSCSANet`` attaches MSCSA in parallel to an unchanged timm backbone (Table 7's mode for ResNet,
PVTv2, P2T, Shunted, Swin and ConvNeXt). For classification it returns logits from the MSCSA head
(Fig. 4); for dense prediction the four backbone maps with MSCSA's injections fused in (Fig. 5).

timm's contract, as ``timm.create_model("<backbone>_mscsa", ...)`` builds it (``mscsa_lab.registry``):

- ``forward_features(x)``: classification: the MSCSA multi-stage map (B x num_features x h x w);
  dense: the four fused maps. ``forward_head(x, pre_logits=False)`` takes that; ``forward`` is the two.
  ``forward_intermediates(x)`` gives (MSCSA map, the four maps ``feature_info`` describes).
- ``feature_info``: the four maps at strides 4..32 (backbone stage maps for classification, fused maps
  for dense), each the output of a parameter-free module ``stage_maps.<i>`` (so hooks see them).
- ``num_features``, ``get_classifier()``, ``reset_classifier(num_classes, global_pool=None)``,
  ``no_weight_decay()``, ``group_matcher(coarse)``, ``set_grad_checkpointing(enable)``.

    >>> import timm, mscsa_lab
    >>> model = timm.create_model("pvt_v2_b1_mscsa", num_classes=10)
    >>> dense = timm.create_model("resnet50_mscsa", task="dense")
    >>> maps = timm.create_model("resnet50_mscsa", features_only=True, out_indices=(1, 3))

No ``from __future__ import annotations`` here: torch.fx writes the traced model's code from
``forward``'s annotations, and a string annotation there does not script afterwards.
"""
import os
import re
from typing import Any, List, NamedTuple, Sequence, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features import feature_take_indices
from torch import nn

from mscsa_lab.models.backbones import MSCSA_STRIDES, StageFeatures, flattened_name
from mscsa_lab.models.checkpointing import CheckpointedBlocks
from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.models.layers import Fusable, fuse_modules
from mscsa_lab.models.heads import ClassificationHead, DenseFusion, resolve_global_pool
from mscsa_lab.models.mscsa import MSCSA, pooled_size, scale_sizes

__all__ = ["MSCSANet", "MSCSAAddOn", "MSCSAParts", "build_mscsa_parts", "mscsa_pretrained_cfg", "TASKS"]

TASKS = ("classification", "dense")

# The data settings a backbone's timm weights were trained with; an MSCSA model uses the same.
_DATA_KEYS = ("input_size", "min_input_size", "test_input_size", "fixed_input_size", "interpolation", "crop_pct",
              "test_crop_pct", "crop_mode", "mean", "std")


def mscsa_pretrained_cfg(source: Any = None, pool_stride: int = 32, first_conv: str | None = None) -> dict[str, Any]:
    """The pretrained config of a backbone+MSCSA model: input size, crop, interpolation, mean and
    std of ``source`` (the backbone's timm pretrained config, a dict or ``PretrainedCfg``), ImageNet
    defaults without one; ``pool_size``, the multi-stage map's size at that input size for MSCSA
    pooling to 1/``pool_stride``; ``first_conv``, the path of the backbone's input conv in the model.
    No weight source: MSCSA has no published weights (``pretrained=True`` loads the backbone's)."""
    cfg: dict[str, Any] = dict(
        num_classes=1000, input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, fixed_input_size=False, classifier="head.fc",
        paper_name="Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention",
        notes=("no MSCSA weights are published: pretrained=True loads the backbone's timm weights",),
    )
    if source is not None:
        get = source.get if isinstance(source, dict) else lambda key: getattr(source, key, None)
        cfg.update({key: get(key) for key in _DATA_KEYS if get(key) is not None})
    cfg["pool_size"] = expected_pool_size(cfg["input_size"][-2:], pool_stride)
    cfg["first_conv"] = first_conv
    return cfg


def expected_pool_size(input_size: Sequence[int], pool_stride: int) -> tuple[int, int]:
    """The multi-stage map's size for an input of ``input_size`` (H, W): each stage of a backbone
    halves its input rounding up (stride 4 = ceil(H / 4)...), and MSCSA pools to 1/``pool_stride``."""
    stage_sizes = [(-(-int(input_size[0]) // s), -(-int(input_size[1]) // s)) for s in MSCSA_STRIDES]
    return pooled_size(stage_sizes, pool_stride)


class MSCSAParts(NamedTuple):
    mscsa: MSCSA
    head: ClassificationHead | None
    fusion: DenseFusion | None


def build_mscsa_parts(
    stage_channels: Sequence[int],
    config: MSCSAConfig,
    task: str = "classification",
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    global_pool: str | None = "avg",
) -> MSCSAParts:
    """MSCSA on four stage maps of ``stage_channels`` widths, and its classification head (Fig. 4)
    or dense fusion (Fig. 5): the one construction ``MSCSANet`` and ``MSCSAAddOn`` share."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown: choose one of {list(TASKS)}")
    mscsa = MSCSA(stage_channels, config, task)
    if task == "classification":
        return MSCSAParts(mscsa, ClassificationHead(mscsa.dim, num_classes, drop_rate, global_pool), None)
    resolve_global_pool(global_pool)  # validated even though the dense path does not pool
    return MSCSAParts(mscsa, None, DenseFusion(mscsa.split_channels, stage_channels, config.fusion_order))


class MSCSAAddOn(nn.Module):
    """MSCSA plus its head or fusion, fed with precomputed stage maps (``forward(f1, f2, f3, f4)``):
    what MSCSA adds to a backbone, e.g. for counting its FLOPs alone."""

    def __init__(self, stage_channels: Sequence[int], config: MSCSAConfig, task: str = "classification",
                 num_classes: int = 1000, drop_rate: float = 0.0, global_pool: str | None = "avg") -> None:
        super().__init__()
        self.mscsa, self.head, self.fusion = build_mscsa_parts(stage_channels, config, task, num_classes, drop_rate,
                                                               global_pool)

    def forward(self, *stage_maps: torch.Tensor):
        x = self.mscsa(stage_maps)
        return self.head(x) if self.head is not None else self.fusion(x, stage_maps)


def _covering_prefixes(groups: list[list[str]]) -> list[str]:
    """One regex per group of parameter names that matches exactly that group's names, written
    with the shortest module paths whose parameters all lie in the group."""
    owner = {name: index for index, group in enumerate(groups) for name in group}
    under: dict[str, set[int]] = {}
    for name, index in owner.items():
        parts = name.split(".")
        for k in range(1, len(parts)):
            under.setdefault(".".join(parts[:k]), set()).add(index)
    patterns = []
    for index, group in enumerate(groups):
        chosen: set[str] = set()
        for name in group:
            parts = name.split(".")
            prefixes = (".".join(parts[:k]) for k in range(1, len(parts)))
            path = next((prefix for prefix in prefixes if under[prefix] == {index}), None)
            chosen.add(re.escape(path) + r"\." if path is not None else re.escape(name) + "$")
        patterns.append(r"^(?:" + "|".join(sorted(chosen)) + ")")
    return patterns


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
        *,
        in_chans: int = 3,
        global_pool: str | None = "avg",
        drop_path_rate: float | None = None,
        weights_overlay: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        """``pretrained`` / ``pretrained_file`` / ``weights_overlay`` load the backbone's timm weights
        (MSCSA has none published). ``drop_path_rate`` sets stochastic depth of the backbone (where its
        timm constructor takes it) and of the MSCSA blocks (``config.drop_path``). ``global_pool``:
        'avg' or '' / None (no pooling)."""
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task={task!r} is unknown: choose one of {list(TASKS)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be a whole number >= 0, got {num_classes!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"in_chans must be a whole number >= 1, got {in_chans!r}")
        for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value < 1.0):
                raise ConfigError(f"{name}={value!r} must be a number in [0, 1)")
        if isinstance(config, dict):
            config = MSCSAConfig.from_dict(config)
        config = config or MSCSAConfig()
        backbone_kwargs = dict(backbone_kwargs or {})
        if drop_path_rate is not None:
            config = config.replace(drop_path=float(drop_path_rate))
            backbone_kwargs.setdefault("drop_path_rate", float(drop_path_rate))
        if in_chans != 3:
            backbone_kwargs.setdefault("in_chans", in_chans)
        self.task = task
        self.config = config
        self.in_chans = in_chans
        self.drop_rate = float(drop_rate)
        self.backbone = StageFeatures(backbone, pretrained, pretrained_file, img_size,
                                      weights_overlay=weights_overlay, cache_dir=cache_dir, **backbone_kwargs)
        self.mscsa, self.head, self.fusion = build_mscsa_parts(
            self.backbone.channels, config, task, num_classes, drop_rate, global_pool
        )
        self.mscsa.blocks = CheckpointedBlocks(*self.mscsa.blocks)
        # Parameter-free taps: their outputs are the four maps feature_info describes.
        self.stage_maps = nn.ModuleList([nn.Identity() for _ in MSCSA_STRIDES])
        self.num_classes = num_classes if task == "classification" else 0
        self.num_features = self.head_hidden_size = self.mscsa.dim
        self.feature_info = [
            dict(num_chs=c, reduction=s, module=f"stage_maps.{i}")
            for i, (c, s) in enumerate(zip(self.backbone.channels, self.backbone.strides))
        ]
        self.grad_checkpointing = False
        self.is_fused = False
        # timm.create_model replaces this by the registered config (then completed by ``complete_cfg``);
        # direct builds keep the backbone's data settings.
        self.pretrained_cfg = self.default_cfg = self.complete_cfg(
            mscsa_pretrained_cfg(getattr(self.backbone.model, "pretrained_cfg", None)))

    def complete_cfg(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """``cfg`` with what depends on this model's build: ``first_conv``, ``pool_size`` (the size of
        what ``forward_features`` returns at ``input_size``: the multi-stage map for classification)
        and ``input_size``'s channels."""
        cfg = dict(cfg)
        input_size = tuple(cfg.get("input_size") or (3, 224, 224))
        cfg["input_size"] = (self.in_chans, *input_size[1:])
        cfg["pool_size"] = expected_pool_size(input_size[1:], self.mscsa.aggregation.pool_stride)
        cfg["first_conv"] = self.first_conv()
        return cfg

    @property
    def global_pool(self) -> str:
        return self.head.global_pool if self.head is not None else ""

    def first_conv(self) -> str | None:
        """Path of the backbone's input conv in this model (timm's ``first_conv``)."""
        cfg = getattr(self.backbone.model, "pretrained_cfg", None) or {}
        names = cfg.get("first_conv")
        own = {name for name, _ in self.named_parameters()}
        for name in ([names] if isinstance(names, str) else list(names or [])):
            for path in (f"backbone.model.{name}", f"backbone.model.{flattened_name(name + '.')[:-1]}",
                         f"backbone.model.model.{name}"):
                if f"{path}.weight" in own:
                    return path
        return None

    # -------------------------------------------------------------- forward
    def _forward_maps(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(what ``forward_features`` returns for classification, the maps feature_info describes):
        the MSCSA multi-stage map and the four stage (dense: fused) maps; after pruning to an
        earlier stage, that stage's map and the stage maps up to it."""
        stages = self.backbone(x)
        if self.mscsa is None:  # pruned: the features end at the last kept stage
            maps = self._tap(stages)
            return maps[-1], maps
        mscsa_map = self.mscsa(stages)
        maps = stages if self.fusion is None else self.fusion(mscsa_map, stages)
        return mscsa_map, self._tap(maps)

    def _tap(self, maps: List[torch.Tensor]) -> List[torch.Tensor]:
        """The maps through the parameter-free ``stage_maps`` modules (so hooks see them)."""
        tapped: List[torch.Tensor] = []
        for index, tap in enumerate(self.stage_maps):
            tapped.append(tap(maps[index]))
        return tapped

    def forward_features(self, x: torch.Tensor):
        """Classification: the MSCSA multi-stage map (B x num_features x h x w), or after
        ``prune_intermediate_layers`` to an earlier stage that stage's map. Dense: the four fused
        maps (strides 4..32)."""
        final, maps = self._forward_maps(x)
        return final if self.fusion is None else maps

    def forward_head(self, x, pre_logits: bool = False):
        """Classification: logits, or with ``pre_logits`` the pooled MSCSA features (the map itself
        when ``global_pool=''``). Dense: the fused maps unchanged (there is no head)."""
        if self.head is None:
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor):
        # forward_head(forward_features(x)), written out so that TorchScript sees one output type per
        # task (its branches on the head are resolved when the model is scripted).
        final, maps = self._forward_maps(x)
        if self.head is None:
            return maps
        return self.head(final)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """(MSCSA multi-stage map, the maps of ``feature_info`` picked by ``indices`` (int: last n;
        None: all)): the backbone's stage maps for classification, the fused maps for dense.
        ``norm`` and ``stop_early`` change nothing (MSCSA needs all four stages; there is no final norm)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ConfigError(f"output_fmt={output_fmt!r}: choose 'NCHW' or 'NHWC'")
        take_indices, _ = feature_take_indices(len(self.stage_maps), indices)
        if intermediates_only and self.fusion is None:  # the stage maps need no MSCSA
            final, maps = None, self._tap(self.backbone(x))
        else:
            final, maps = self._forward_maps(x)
        intermediates = [maps[i] for i in take_indices]
        if output_fmt == "NHWC":
            intermediates = [m.permute(0, 2, 3, 1) for m in intermediates]
        return intermediates if intermediates_only else (final, intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep what the maps picked by ``indices`` need (timm's contract, as ``FeatureGetterNet`` uses it).

        Classification, last wanted map before the last stage: MSCSA needs all four stages, so MSCSA,
        the head and the backbone's later stages go; ``forward_features`` then returns the last kept
        stage's map and ``forward`` that map (no classifier; ``reset_classifier`` adds one).
        Otherwise only the classifier goes (with ``prune_head``). A dense model keeps everything:
        each fused map needs MSCSA and so all four stages. ``prune_norm``: there is no final norm."""
        take_indices, max_index = feature_take_indices(len(self.stage_maps), indices)
        if self.fusion is None and self.mscsa is not None and max_index < len(self.stage_maps) - 1:
            self.backbone.prune(max_index)
            self.mscsa = None
            self.stage_maps = self.stage_maps[: max_index + 1]
            self.num_features = self.head_hidden_size = self.backbone.channels[max_index]
            self.head = ClassificationHead(self.num_features, 0, self.drop_rate, "")  # no parameters
            self.num_classes = 0
        elif prune_head and self.head is not None:
            self.reset_classifier(0, "")
        return take_indices

    # -------------------------------------------------------------- timm's classifier contract
    def get_classifier(self) -> nn.Module:
        """The classification Linear (``nn.Identity`` without classes or for a dense model)."""
        return self.head.fc if self.head is not None else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (BN + Linear) for ``num_classes`` (0: the model returns pre-logits);
        ``global_pool`` 'avg' or '' (None keeps the current pooling)."""
        if self.head is None:
            raise ConfigError("a dense MSCSA model has no classifier to reset: build it with task='classification'")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be a whole number >= 0, got {num_classes!r}")
        like = next(self.parameters())  # a new head goes where the model is, in its dtype
        self.head.reset(num_classes, global_pool, device=like.device, dtype=like.dtype)
        self.num_classes = num_classes
        if self.is_fused:
            self.head.fuse()

    # -------------------------------------------------------------- timm's training contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters to train without weight decay beyond timm's default (biases and norms): the
        backbone's own list (e.g. Swin's relative position tables, CoaT's class tokens)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for timm's ``group_parameters`` (layer-wise LR decay), first to last:
        the backbone's stem and its own block (``coarse``: stage) groups, the MSCSA aggregation,
        each MSCSA block, then the head or fusion. Every parameter matches exactly one entry."""
        groups = [[f"backbone.{name}" for name in group] for group in self.backbone.parameter_groups(coarse)]
        patterns = _covering_prefixes(groups)
        matcher: dict[str, Any] = dict(
            stem=patterns[0] if patterns else None,
            blocks=[(pattern, (index,)) for index, pattern in enumerate(patterns[1:])] or None,
        )
        if coarse:
            matcher["mscsa"] = r"^mscsa\."
        else:
            matcher["mscsa_aggregation"] = r"^mscsa\.aggregation\."
            matcher["mscsa_blocks"] = r"^mscsa\.blocks\.(\d+)\."
        matcher["head"] = r"^(?:head|fusion)\."
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them: each MSCSA block, and the
        backbone's stages where timm supports it for that backbone (``backbone.grad_checkpointing``)."""
        self.grad_checkpointing = enable
        if self.mscsa is not None and isinstance(self.mscsa.blocks, CheckpointedBlocks):
            self.mscsa.blocks.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

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

    def summary(self, input_size: tuple[int, int] = (224, 224),
                stage_sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Architecture facts a user wants before profiling: stages, widths, token counts per scale.
        ``stage_sizes``: the four stage map sizes at ``input_size`` when the caller has observed them
        (``analysis.observe``); otherwise one backbone pass finds them."""
        if self.mscsa is None:
            raise ConfigError("this model was pruned to an earlier stage (prune_intermediate_layers): it has no MSCSA")
        height, width = input_size
        if stage_sizes is None:
            with torch.no_grad():
                was_training = self.training
                self.eval()
                stage_sizes = [tuple(f.shape[-2:]) for f in self.backbone(torch.zeros(1, self.in_chans, height, width))]
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
