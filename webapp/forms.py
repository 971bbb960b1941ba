"""Form values (strings, numbers, booleans from the page) as the typed requests the workflows take.

A form field is text where a blank means "as the profile says" (a blank ``gr.Number`` would arrive as 0),
so numbers are read here, by name: text, NaN and infinities are refused with the field's name.
"""
from __future__ import annotations

import math
from typing import Any

from mscsa_lab.models.config import ConfigError
from mscsa_lab.workflows.limits import ResourceLimits
from mscsa_lab.workflows.spec import ModelSpec

__all__ = ["blank", "number", "whole", "build_spec", "training_fields", "ablation_fields", "BUILD_FIELDS"]

# The Build form's fields, in the order of the /build route's inputs.
BUILD_FIELDS = ("profile", "backbone", "task", "height", "width", "depth", "num_heads", "key_dim", "mlp_ratio",
                "squeeze_ratio", "use_pcp", "use_intra_ffn", "use_msp", "downsample", "num_classes", "pretrained",
                "pretrained_file")


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or \
        (isinstance(value, float) and math.isnan(value))


def number(name: str, value: Any) -> float:
    """A finite number from a form field; text, NaN and infinities ("1e400") are refused by name."""
    try:
        result = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {str(value)[:200]!r}") from None
    if not math.isfinite(result):
        raise ConfigError(f"{name} must be a finite number, got {str(value)[:200]!r}")
    return result


def whole(name: str, value: Any, low: int, high: int) -> int:
    if blank(value):
        raise ConfigError(f"{name} is empty: give a whole number from {low} to {high}")
    result = number(name, value)
    if result != int(result) or not low <= result <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {str(value)[:200]!r}")
    return int(result)


def build_spec(values: dict[str, Any]) -> ModelSpec:
    """The Build form as a ``ModelSpec``: a typed timm backbone overrides the profile; blank settings are the
    profile's; the ablation switches and the down-sampling are always given."""
    settings: dict[str, Any] = {}
    for name in ("use_pcp", "use_intra_ffn", "use_msp"):
        if name in values:
            settings[name] = bool(values[name])
    if values.get("downsample"):
        settings["downsample"] = values["downsample"]
    for name in ("depth", "num_heads", "key_dim"):
        if not blank(values.get(name)):
            result = number(name, values[name])
            if result != int(result):
                raise ConfigError(f"{name} must be a whole number, got {str(values[name])[:200]!r}")
            settings[name] = int(result)
    if not blank(values.get("mlp_ratio")):
        settings["mlp_ratio"] = number("mlp_ratio", values["mlp_ratio"])
    if not blank(values.get("squeeze_ratio")):
        settings["squeeze_ratio"] = str(values["squeeze_ratio"]).strip()
    backbone = str(values.get("backbone") or "").strip()
    profile = str(values.get("profile") or "").strip()
    classes = values.get("num_classes")
    return ModelSpec.resolve(backbone or profile, task=values.get("task") or "classification",
                             input_size=(values.get("height", 224), values.get("width", 224)),
                             num_classes=1000 if blank(classes) else whole("number of classes", classes, 0, 100_000),
                             settings=settings, pretrained=bool(values.get("pretrained")),
                             pretrained_file=values.get("pretrained_file") or None)


def training_fields(limits: ResourceLimits, data: str, profile: str, backbone: str, mode: str, epochs: Any,
                    max_steps: Any, batch: Any, img_size: Any, lr: Any, pretrained: bool, resume: bool = False,
                    pretrained_file: str | None = None) -> dict[str, Any]:
    """The Train tab's form as ``TrainConfig`` fields (validated again by the engine)."""
    fields: dict[str, Any] = dict(
        resume=bool(resume), data=(data or "").strip() or "synthetic", profile=(profile or "").strip() or None,
        backbone=(backbone or "").strip() or None, mode=mode or None, pretrained=bool(pretrained),
        pretrained_file=pretrained_file or None,
        epochs=whole("epochs", epochs, 1, 1000), batch_size=whole("batch", batch, 1, 1024),
        img_size=whole("image size", img_size, 32, 1024),
    )
    if fields["profile"] is None and fields["backbone"] is None:
        raise ConfigError("give a backbone (a timm name such as resnet18) or pick a Table 7 profile")
    limits.check_count("epochs", fields["epochs"], "max_epochs")
    limits.check_count("batch", fields["batch_size"], "max_batch")
    if not blank(max_steps):
        fields["max_steps"] = limits.check_count("max steps", whole("max steps", max_steps, 1, 10**7),
                                                 "max_train_steps")
    if not blank(lr):
        rate = number("learning rate", lr)
        if not 0 < rate <= 10:
            raise ConfigError(f"learning rate must be a number in (0, 10], got {str(lr)[:200]!r}")
        fields["lr"] = rate
    return fields


def ablation_fields(limits: ResourceLimits, model: str, table: str, seeds: str, data: str, max_steps: Any,
                    batch: Any, img_size: Any) -> tuple[str, str, list[int], dict[str, Any]]:
    """The ablation form as ``ablate_action`` arguments: (model, variants, seeds, training fields)."""
    model = (model or "").strip() or "demo"
    text = str(seeds or "").replace(",", " ").split()
    if not text:
        raise ConfigError("seeds is empty: give one or more whole numbers, e.g. 0 1 2")
    try:
        seed_list = [int(value) for value in text]
    except ValueError:
        raise ConfigError(f"seeds must be whole numbers separated by spaces, got {str(seeds)[:200]!r}") from None
    if len(seed_list) > 10 or any(not 0 <= seed < 2**31 for seed in seed_list):
        raise ConfigError(f"give 1 to 10 seeds, each from 0 to {2**31 - 1}, got {str(seeds)[:200]!r}")
    fields = dict(data=(data or "").strip() or "synthetic", max_steps=whole("max steps", max_steps, 1, 100_000),
                  batch_size=whole("batch", batch, 2, 512), img_size=whole("image size", img_size, 32, 512))
    limits.check_count("batch", fields["batch_size"], "max_batch")
    limits.check_count("steps per run", fields["max_steps"], "max_train_steps")
    return model, f"table{str(table).strip().lower().replace('table', '').strip() or '4'}", seed_list, fields
