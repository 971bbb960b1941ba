"""Build a model from user choices and describe its architecture as tables.

One entry point for the app, the command line and the tests: they all build models through
``build_model`` and show them through ``architecture_tables``.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .config import ConfigError
from .models.mscsa_net import MSCSANet, create_mscsa_model

__all__ = ["build_model", "build_named_model", "architecture_tables", "parse_input_size"]

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
    from .profiles import ProfileError, load_profile

    try:
        load_profile(name)
        return build_model(name, None, task, input_size, **settings)
    except ProfileError:
        return build_model(None, name, task, input_size, **settings)


def architecture_tables(model: MSCSANet, input_size: tuple[int, int] = (224, 224)) -> dict[str, pd.DataFrame]:
    """Stages (stride, widths, map sizes), K/V scales (grid, tokens) and parameter counts."""
    summary = model.summary(parse_input_size(*input_size))
    stages = pd.DataFrame(
        [
            {
                "stage": index + 1,
                "stride": stage["stride"],
                "channels": stage["channels"],
                "MSCSA channels": stage["squeezed_channels"],
                "map size": "x".join(map(str, stage["map_size"])),
            }
            for index, stage in enumerate(summary["stages"])
        ]
    )
    scales = pd.DataFrame(
        [
            {"scale": f"X{index}", "grid": "x".join(map(str, grid)), "tokens": tokens}
            for index, (grid, tokens) in enumerate(zip(summary["scale_grids"], summary["tokens_per_scale"]))
        ]
    )
    params = pd.DataFrame(
        [{"part": part, "parameters": count} for part, count in summary["params"].items() if count or part == "total"]
    )
    return {"stages": stages, "scales": scales, "params": params, "summary": summary}
