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
from mscsa_lab.models.topformer import MODEL_CFGS as TOPFORMER_CFGS
from mscsa_lab.models.topformer import TopFormerSegMSCSA
from mscsa_lab.presets import Profile, ProfileError, list_profiles, load_profile

__all__ = [
    "create_mscsa_model",
    "resolve_name",
    "build_model",
    "build_named_model",
    "parse_input_size",
    "MIN_SIDE",
    "MAX_SIDE",
    "SEGMENTATION",
]

# The task of TopFormer's segmentation model with MSCSA in place of SASE (the paper's Table 3).
SEGMENTATION = "segmentation"
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
    num_classes: int | None = None,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    drop_rate: float | None = None,
    check_memory: bool = True,
    **overrides: Any,
) -> MSCSANet | TopFormerSegMSCSA:
    """Build backbone+MSCSA from a Table 7 profile, or from any timm backbone and a custom config.

    ``overrides`` change single MSCSA settings of the profile (``depth=2``, ``squeeze_ratio="1/2"``).
    ``img_size`` is the input size for backbones built for one size (Swin); others ignore it.
    ``num_classes``: 1000 unless given (150, ADE20K's, for segmentation); ``drop_rate``: the head's
    dropout, 0 unless given (TopFormer's 0.1 for segmentation).

    ``task``: "classification" (Fig. 4), "dense" (the four fused maps, Fig. 5) or, for the TopFormer
    profiles only, "segmentation": TopFormer's segmentation model with MSCSA in place of SASE (the
    paper's Table 3; ``TopFormerSegMSCSA``, logits at stride 8). ``backbone_kwargs`` then go to
    ``TopFormerSegMSCSA`` (e.g. ``in_chans``).

    ``check_memory``: a custom configuration (``config`` or ``overrides``) is first built on the meta device
    (about a second even for billions of parameters) and refused with ``ResourceError`` when its weights
    alone would not fit in the memory free now, instead of the process being killed; ``False`` skips that.
    """
    if check_memory and (config is not None or overrides) and torch.empty(0).device.type != "meta":
        _check_weights_fit(dict(profile=profile, backbone=backbone, config=config, task=task, num_classes=num_classes,
                                img_size=img_size, backbone_kwargs=backbone_kwargs, drop_rate=drop_rate), overrides)
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
    if task == SEGMENTATION:
        return _create_segmentation_model(profile, backbone, base, num_classes, drop_rate, pretrained,
                                          pretrained_file, backbone_kwargs)
    return MSCSANet(
        backbone,
        base,
        task=task,
        num_classes=1000 if num_classes is None else num_classes,
        drop_rate=0.0 if drop_rate is None else drop_rate,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        img_size=img_size,
        backbone_kwargs=backbone_kwargs,
    )


def _check_weights_fit(arguments: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``ResourceError`` when the model these arguments describe has more weight bytes than memory is free
    (at most 90% of it: building needs some room besides)."""
    from mscsa_lab.analysis.cost import available_memory_bytes
    from mscsa_lab.io.numbers import human_bytes, human_count
    from mscsa_lab.workflows.limits import ResourceError

    with torch.device("meta"):
        shapes = create_mscsa_model(**arguments, check_memory=False, **overrides)
    params = sum(p.numel() for p in shapes.parameters())
    needed = sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    free = available_memory_bytes("cpu")
    if needed > 0.9 * free:
        raise ResourceError(f"this configuration has {human_count(params)} parameters: its weights alone need "
                            f"{human_bytes(needed)}, and {human_bytes(free)} of memory is free. Lower depth, "
                            "num_heads, key_dim or mlp_ratio, or pass check_memory=False to build it anyway")


def _create_segmentation_model(
    profile: Profile | None,
    backbone: str,
    config: MSCSAConfig,
    num_classes: int | None,
    drop_rate: float | None,
    pretrained: bool,
    pretrained_file: str | os.PathLike | None,
    backbone_kwargs: dict[str, Any] | None,
) -> TopFormerSegMSCSA:
    """TopFormer's segmentation model with MSCSA in place of SASE, for a ``replace_sase`` profile
    (or a TopFormer variant named as the backbone); a clear error for every other backbone."""
    if (profile is not None and profile.attach != "replace_sase") or backbone not in TOPFORMER_CFGS:
        topformers = ", ".join(p.name for p in list_profiles() if p.attach == "replace_sase")
        what = (f"profile {profile.name!r} attaches MSCSA {profile.attach!r}" if profile is not None and
                profile.attach != "replace_sase" else f"backbone {backbone!r} is not a TopFormer")
        raise ConfigError(
            f"task='segmentation' (MSCSA in place of SASE with TopFormer's semantic injection and light head, "
            f"the paper's Table 3) exists only for the TopFormer profiles ({topformers}); {what}. For other "
            f"backbones use task='dense' (the four fused maps of Fig. 5) and a segmentation head of your own"
        )
    if pretrained or pretrained_file is not None:
        raise ConfigError(f"no weights are published for {backbone!r}: task='segmentation' starts from random "
                          "weights, so leave pretrained and pretrained_file out")
    num_classes = 150 if num_classes is None else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a whole number >= 1 for segmentation, got {num_classes!r}")
    drop_rate = 0.1 if drop_rate is None else drop_rate
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"drop_rate={drop_rate!r} must be a number in [0, 1)")
    extra = dict(backbone_kwargs or {})
    unknown = sorted(set(extra) - {"in_chans", "stem_chs", "inject_chs", "head_dw"})
    if unknown:
        raise ConfigError(f"task='segmentation': backbone_kwargs {unknown} are not taken; the TopFormer "
                          "segmentation model takes in_chans, stem_chs, inject_chs and head_dw")
    return TopFormerSegMSCSA.from_variant(backbone, config, num_classes=num_classes, drop_rate=float(drop_rate),
                                          **extra)


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


# --------------------------------------------------------------------------- timm registrations
# (This section's own imports, kept here so that the section stands on its own.)
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402

from timm.models import build_model_with_cfg, generate_default_cfgs  # noqa: E402
from timm.models._features import FeatureGetterNet  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mscsa_lab.models.config import UnknownArgumentError  # noqa: E402
from mscsa_lab.models.mscsa_net import mscsa_pretrained_cfg  # noqa: E402

# Registered name -> Table 7 profile.
_REGISTERED: dict[str, str] = {
    "resnet18_mscsa": "resnet18",
    "resnet50_mscsa": "resnet50",
    "pvt_v2_b0_mscsa": "pvt_v2_b0",
    "pvt_v2_b1_mscsa": "pvt_v2_b1",
    "pvt_v2_b2_mscsa": "pvt_v2_b2",
    "swin_tiny_patch4_window7_224_mscsa": "swin_tiny",
    "convnext_tiny_mscsa": "convnext_tiny",
    "coat_tiny_mscsa": "coat_tiny",
    "coat_small_mscsa": "coat_small",
    "topformer_tiny_mscsa": "topformer_tiny",
    "topformer_base_mscsa": "topformer_base",
    "p2t_tiny_mscsa": "p2t_tiny",
    "shunted_tiny_mscsa": "shunted_tiny",
}
# timm arguments an MSCSA model takes (besides its MSCSA settings, passed under their own names).
_MODEL_ARGS = ("num_classes", "in_chans", "drop_rate", "drop_path_rate", "global_pool", "task", "img_size",
               "pretrained_file", "backbone_kwargs", "features_only", "out_indices", "feature_cls", "device", "dtype")
_SETTINGS = tuple(f.name for f in dataclasses.fields(MSCSAConfig) if f.name != "extra")
# pretrained_cfg keys that name a weight source: for an MSCSA model they describe the backbone's weights.
_SOURCE_KEYS = ("file", "state_dict", "url", "hf_hub_id", "hf_hub_filename", "source")


def _registered_cfg(profile: Profile) -> dict[str, Any]:
    """Data settings of the backbone's timm weights (the baseline's for backbones that load the
    baseline's weights, as CoaT's serial blocks do), ImageNet defaults for backbones without; the
    pool size of the profile's MSCSA. ``first_conv`` is filled in when a model is built (its path
    depends on how timm wraps the backbone's features)."""
    pool_stride = profile.config.pool_stride_for("classification")
    for name in (profile.backbone, profile.baseline_model):
        try:
            source = timm.models.get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001 - timm raises several types for unknown names
            source = None
        if source is not None:
            return mscsa_pretrained_cfg(source, pool_stride)
    return mscsa_pretrained_cfg(None, pool_stride)


_PROFILES = {profile.name: profile for profile in list_profiles()}
default_cfgs = generate_default_cfgs(
    {name: _registered_cfg(_PROFILES[profile]) for name, profile in _REGISTERED.items()}
)


def _create_registered(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A registered ``*_mscsa`` model built through timm's ``build_model_with_cfg``.

    ``pretrained=True`` loads the backbone's timm weights (MSCSA has none published); a weight
    source in ``pretrained_cfg_overlay`` (e.g. ``file=``) or ``pretrained_file`` names the backbone's
    weights. ``features_only=True`` builds the dense model and returns its four fused maps
    (``out_indices`` picks among strides 4, 8, 16, 32). MSCSA settings go by their own names."""
    profile = _PROFILES[_REGISTERED[variant]].require_available()  # read once, at import
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    cache_dir = kwargs.pop("cache_dir", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    check_memory = bool(kwargs.pop("check_memory", True))
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in _SETTINGS}
    unknown = sorted(set(kwargs) - set(_MODEL_ARGS))
    if unknown:
        raise UnknownArgumentError(
            f"{variant}: unknown argument(s) {unknown}. It takes timm's {', '.join(_MODEL_ARGS[:-2])} and "
            f"the MSCSA settings {', '.join(_SETTINGS)}"
        )
    if "drop_path" in settings and kwargs.get("drop_path_rate") is not None:
        raise ConfigError(f"{variant}: drop_path_rate sets stochastic depth of the backbone and MSCSA together, "
                          "drop_path MSCSA's alone: give one of them")
    if kwargs.get("task") == SEGMENTATION:  # TopFormer's segmentation model with MSCSA (Table 3)
        allowed = ("task", "num_classes", "drop_rate", "drop_path_rate", "in_chans", "img_size")
        extra = sorted(set(kwargs) - set(allowed))
        if extra or any(key in overlay for key in _SOURCE_KEYS):
            raise ConfigError(f"{variant}: task='segmentation' takes {', '.join(allowed[1:])} and the MSCSA settings; "
                              f"not {extra or 'a weight source'}")
        if kwargs.get("drop_path_rate") is not None:
            settings["drop_path"] = float(kwargs["drop_path_rate"])
        model = create_mscsa_model(profile, task=SEGMENTATION, num_classes=kwargs.get("num_classes"),
                                   drop_rate=kwargs.get("drop_rate"), pretrained=pretrained,
                                   backbone_kwargs={"in_chans": kwargs["in_chans"]} if "in_chans" in kwargs else None,
                                   **settings)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
    feature_cls = kwargs.pop("feature_cls", "getter")
    if kwargs.get("features_only"):
        task = kwargs.setdefault("task", "dense")
        if task != "dense":
            raise ConfigError(f"{variant}: features_only=True returns the four fused maps of the dense model "
                              f"(Fig. 5); task={task!r} has none: leave task out")
        if feature_cls not in ("getter", FeatureGetterNet):
            raise ConfigError(f"{variant}: features_only models use timm's feature getter (feature_cls='getter'), "
                              f"got feature_cls={feature_cls!r}")
    elif "out_indices" in kwargs:
        raise ConfigError(f"{variant}: out_indices picks feature maps: it needs features_only=True")
    config = profile.config.replace(**settings)
    on_meta = (torch.device(device).type if device is not None else torch.empty(0).device.type) == "meta"
    if check_memory and settings and not on_meta:
        _check_weights_fit(dict(profile=profile, task=kwargs.get("task", "classification"),
                                num_classes=kwargs.get("num_classes")), settings)
    # Built where it is asked for (no memory and no initialisation cost on the meta device), then cast.
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            # MSCSA has no weights of its own to load: the backbone's are loaded inside MSCSANet.
            functools.partial(MSCSANet, pretrained=pretrained, weights_overlay=overlay, cache_dir=cache_dir),
            variant,
            pretrained=False,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay={key: value for key, value in overlay.items() if key not in _SOURCE_KEYS},
            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
            backbone=profile.backbone,
            config=config,
            **kwargs,
        )
    net = model.model if isinstance(model, FeatureGetterNet) else model
    if isinstance(net, MSCSANet):  # the registered config, completed for this build
        net.pretrained_cfg = net.default_cfg = net.complete_cfg(net.pretrained_cfg)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


@register_model
def resnet18_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("resnet18_mscsa", pretrained, **kwargs)


@register_model
def resnet50_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("resnet50_mscsa", pretrained, **kwargs)


@register_model
def pvt_v2_b0_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("pvt_v2_b0_mscsa", pretrained, **kwargs)


@register_model
def pvt_v2_b1_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("pvt_v2_b1_mscsa", pretrained, **kwargs)


@register_model
def pvt_v2_b2_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("pvt_v2_b2_mscsa", pretrained, **kwargs)


@register_model
def swin_tiny_patch4_window7_224_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("swin_tiny_patch4_window7_224_mscsa", pretrained, **kwargs)


@register_model
def convnext_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("convnext_tiny_mscsa", pretrained, **kwargs)


@register_model
def coat_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CoaT Tiny's serial blocks with MSCSA in place of its parallel blocks."""
    return _create_registered("coat_tiny_mscsa", pretrained, **kwargs)


@register_model
def coat_small_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """CoaT Small's serial blocks with MSCSA in place of its parallel blocks."""
    return _create_registered("coat_small_mscsa", pretrained, **kwargs)


@register_model
def topformer_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """TopFormer-T's token pyramid with MSCSA in place of its Scale-Aware Semantics Extractor."""
    return _create_registered("topformer_tiny_mscsa", pretrained, **kwargs)


@register_model
def topformer_base_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """TopFormer-B's token pyramid with MSCSA in place of its Scale-Aware Semantics Extractor."""
    return _create_registered("topformer_base_mscsa", pretrained, **kwargs)


@register_model
def p2t_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("p2t_tiny_mscsa", pretrained, **kwargs)


@register_model
def shunted_tiny_mscsa(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create_registered("shunted_tiny_mscsa", pretrained, **kwargs)
