"""Four-stage feature extraction from timm backbones, and where their pretrained weights live.

MSCSA needs exactly the maps at strides 4, 8, 16 and 32 in NCHW. timm's ``features_only`` models
give more or other stages for some families (a ResNet's first feature is the stride-2 stem) and
NHWC maps for others (Swin); this module hides both.
"""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = [
    "StageFeatures",
    "BackboneError",
    "PretrainedWeightsUnavailable",
    "find_local_weights",
    "create_timm_model",
    "MSCSA_STRIDES",
]

MSCSA_STRIDES = (4, 8, 16, 32)


class BackboneError(ValueError):
    """The backbone is unknown or cannot give the four stage maps MSCSA needs."""


class PretrainedWeightsUnavailable(RuntimeError):
    """``pretrained=True`` was asked for but no weights for the backbone are on this machine."""


def find_local_weights(backbone: str) -> Path | None:
    """The backbone's timm weights if they are already on disk (Hugging Face or torch hub cache,
    or the pretrained config's ``file``); never downloads."""
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:  # noqa: BLE001 - timm raises several types for unknown names
        cfg = None
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with timm
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id = cfg.hf_hub_id.split("@")[0]
            for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
                found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.is_file():
            return candidate
    return None


def _resolve_pretrained(backbone: str, pretrained: bool, pretrained_file: str | os.PathLike | None) -> dict:
    """timm.create_model keyword arguments that load weights from a local file, or none."""
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise PretrainedWeightsUnavailable(f"pretrained_file {str(path)!r} does not exist")
        return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    if not pretrained:
        return dict(pretrained=False)
    local = find_local_weights(backbone)
    if local is None:
        raise PretrainedWeightsUnavailable(
            f"no pretrained weights for backbone {backbone!r} on this machine (looked in the Hugging Face "
            f"and torch hub caches). Copy the timm weights there, pass pretrained_file='path/to/weights."
            f"safetensors', or use pretrained=False for random initialisation."
        )
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(local)))


def create_timm_model(name: str, img_size: int | tuple[int, int] | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` with ``img_size`` passed only to models whose constructor takes it
    (Swin's windows are built for one input size; most models take any size and no ``img_size``)."""
    if img_size is not None:
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
    return timm.create_model(name, **kwargs)


class StageFeatures(nn.Module):
    """A timm backbone returning its four stage maps at strides 4..32, always NCHW.

    ``channels`` and ``strides`` describe those maps; ``stage_indices`` picks them out of timm's
    feature list (for a ResNet that skips the stride-2 stem).
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        img_size: int | tuple[int, int] | None = None,
        **backbone_kwargs,
    ) -> None:
        """``img_size`` is passed to backbones whose constructor takes it (Swin's windows are
        built for one input size) and ignored by the others, which take any size."""
        super().__init__()
        if not isinstance(backbone, str) or not backbone:
            raise BackboneError(f"backbone must be a timm model name, got {backbone!r}")
        if not timm.is_model(backbone):
            close = timm.list_models(f"*{backbone.split('_')[0]}*")[:8] if backbone.split("_")[0] else []
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise BackboneError(f"unknown timm backbone {backbone!r}.{hint}")
        weight_kwargs = _resolve_pretrained(backbone, pretrained, pretrained_file)
        try:
            model = create_timm_model(backbone, img_size, features_only=True, **weight_kwargs, **backbone_kwargs)
        except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as error:
            if weight_kwargs.get("pretrained"):
                raise PretrainedWeightsUnavailable(
                    f"could not load weights for {backbone!r}: {error}"
                ) from error
            raise BackboneError(
                f"timm backbone {backbone!r} cannot give feature maps (features_only): {error}"
            ) from error
        reductions = list(model.feature_info.reduction())
        missing = [s for s in MSCSA_STRIDES if s not in reductions]
        if missing:
            raise BackboneError(
                f"backbone {backbone!r} has feature maps at strides {reductions}; MSCSA needs "
                f"four stages at strides {list(MSCSA_STRIDES)} (missing {missing})"
            )
        # The last map of each stride is that stage's output.
        self.stage_indices = [max(i for i, r in enumerate(reductions) if r == s) for s in MSCSA_STRIDES]
        all_channels = list(model.feature_info.channels())
        self.channels = [all_channels[i] for i in self.stage_indices]
        self.strides = list(MSCSA_STRIDES)
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.name = backbone
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        stages = [features[i] for i in self.stage_indices]
        if self.nhwc:
            stages = [f.permute(0, 3, 1, 2).contiguous() for f in stages]
        return stages
