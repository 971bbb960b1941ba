"""CoaT's serial blocks as a four-stage backbone, for MSCSA in place of CoaT's parallel blocks.

Table 7 of the MSCSA paper replaces CoaT's parallel blocks by MSCSA and keeps the serial blocks,
whose four stage maps (strides 4..32) feed MSCSA. timm's CoaT already builds without parallel
blocks (``parallel_depth=0``) and returns the serial stages through ``features_only``; this module
registers those serial-only models under their own names, so that ``coat_tiny_mscsa`` can build on
them while ``coat_tiny`` stays timm's full model (the baseline of comparisons).

(timm's own ``coat_small`` entry point passes its keyword arguments twice, so the configurations
are given to timm's builder here directly.)
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.coat import CoaT, _create_coat

__all__ = ["COAT_CONFIGS", "coat_tiny_serial", "coat_small_serial"]

# timm's configurations of the published CoaT models, without the parallel blocks.
COAT_CONFIGS: dict[str, dict[str, Any]] = {
    "coat_tiny": dict(patch_size=4, embed_dims=[152, 152, 152, 152], serial_depths=[2, 2, 2, 2]),
    "coat_small": dict(patch_size=4, embed_dims=[152, 320, 320, 320], serial_depths=[2, 2, 2, 2]),
}


def _create_serial(variant: str, pretrained: bool = False, **kwargs: Any) -> CoaT:
    kwargs.pop("parallel_depth", None)
    # The pretrained weights are those of the full model (its serial blocks load; the rest is unused).
    return _create_coat(variant, pretrained=pretrained, **COAT_CONFIGS[variant], parallel_depth=0, **kwargs)


@register_model
def coat_tiny_serial(pretrained: bool = False, **kwargs: Any) -> CoaT:
    """CoaT Tiny's serial blocks only (strides 4..32, 152 channels each)."""
    return _create_serial("coat_tiny", pretrained, **kwargs)


@register_model
def coat_small_serial(pretrained: bool = False, **kwargs: Any) -> CoaT:
    """CoaT Small's serial blocks only (strides 4..32, 152/320/320/320 channels)."""
    return _create_serial("coat_small", pretrained, **kwargs)
