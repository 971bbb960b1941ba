"""Where presets (Table 7 profiles) and models meet: the one place that turns a name into a model.

``create_mscsa_model`` builds backbone+MSCSA from a profile or from any timm backbone with a custom
configuration; ``resolve_name`` decides whether a user's name is a profile or a timm backbone (the
app, the command line, the comparison and the budget all ask it); ``build_model`` adds the input-size
checks a form needs. The ``*_mscsa`` timm registrations live here too, so ``models/`` stays free of
presets and ``presets`` stays free of models.
"""
from __future__ import annotations

import os
from typing import Any

import timm
from timm.models import register_model

from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.models.mscsa_net import MSCSANet
from mscsa_lab.presets import Profile, ProfileError, list_profiles, load_profile

__all__ = [
    "create_mscsa_model",
    "resolve_name",
    "build_model",
    "build_named_model",
    "parse_input_size",
    "MIN_SIDE",
    "MAX_SIDE",
]

MAX_SIDE = 4096
MIN_SIDE = 32


def parse_input_size(height: Any, width: Any) -> tuple[int, int]:
    """Validate an input size: whole numbers between 32 (one pixel at stride 32) and 4096."""
    size = []
    for name, value in (("height", height), ("width", width)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"input {name} must be a number, got {value!r}") from None
        if not number.is_integer() or not MIN_SIDE <= number <= MAX_SIDE:
            raise ConfigError(f"input {name}={value!r}: choose a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}")
        size.append(int(number))
    return size[0], size[1]


def resolve_name(name: str | Profile) -> tuple[str, Profile | None]:
    """(label, profile or None) for a Table 7 profile (by name, backbone, model name or title) or
    any timm backbone name; an unknown name raises ``ProfileError`` listing the profiles."""
    if isinstance(name, Profile):
        return name.name, name
    try:
        return name, load_profile(name)
    except ProfileError:
        if isinstance(name, str) and timm.is_model(name.strip()):
            return name.strip(), None
        raise ProfileError(
            f"{name!r} is neither a Table 7 profile nor a timm model name; profiles: "
            f"{', '.join(p.name for p in list_profiles())}"
        ) from None


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


def build_model(
    profile: str | None = None,
    backbone: str | None = None,
    task: str = "classification",
    input_size: tuple[int, int] = (224, 224),
    num_classes: int = 1000,
    **settings: Any,
) -> MSCSANet:
    """A backbone+MSCSA model in eval mode, from a profile name or a timm backbone name plus
    MSCSA settings (``depth=2``, ``use_pcp=False``...). Blank strings count as not given."""
    profile = (profile or "").strip() or None
    backbone = (backbone or "").strip() or None
    height, width = parse_input_size(*input_size)
    model = create_mscsa_model(
        profile, backbone=backbone, task=task, num_classes=num_classes, img_size=(height, width), **settings
    )
    return model.eval()


def build_named_model(name: str, task: str = "classification", input_size: tuple[int, int] = (224, 224),
                      **settings: Any) -> MSCSANet:
    """A model from one name: a Table 7 profile (``pvt_v2_b1``) or any timm backbone (``resnet34``)."""
    label, profile = resolve_name(name)
    if profile is not None:
        return build_model(profile.name, None, task, input_size, **settings)
    return build_model(None, label, task, input_size, **settings)


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
