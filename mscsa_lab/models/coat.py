"""CoaT's serial blocks as a four-stage backbone, for MSCSA in place of CoaT's parallel blocks.

Table 7 of the MSCSA paper replaces CoaT's parallel blocks by MSCSA and keeps the serial blocks,
whose four stage maps (strides 4..32) feed MSCSA. timm's CoaT already builds without parallel
blocks (``parallel_depth=0``) and returns the serial stages through ``features_only``; this module
registers those serial-only models under their own names, so that ``coat_tiny_mscsa`` can build on
them while ``coat_tiny`` stays timm's full model (the baseline of comparisons).

(timm's own ``coat_small`` entry point passes its keyword arguments twice, so the configurations
are given to timm's builder here directly.) ``SerialCoaT`` is timm's ``CoaT`` with a
``forward_intermediates`` that TorchScript compiles: timm's reaches its scales through attribute
names built at run time (``getattr(self, f'patch_embed{i + 1}')``), which scripting cannot follow.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models.coat import CoaT, checkpoint_filter_fn, insert_cls, remove_cls

__all__ = ["COAT_CONFIGS", "SerialCoaT", "coat_tiny_serial", "coat_small_serial"]

# timm's configurations of the published CoaT models, without the parallel blocks.
COAT_CONFIGS: dict[str, dict[str, Any]] = {
    "coat_tiny": dict(patch_size=4, embed_dims=[152, 152, 152, 152], serial_depths=[2, 2, 2, 2]),
    "coat_small": dict(patch_size=4, embed_dims=[152, 320, 320, 320], serial_depths=[2, 2, 2, 2]),
}


def _token_map(tokens: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """A scale's tokens (class token first) as an NCHW map."""
    return remove_cls(tokens).reshape(tokens.shape[0], size[0], size[1], -1).permute(0, 3, 1, 2).contiguous()


class SerialCoaT(CoaT):
    """timm's CoaT built without parallel blocks (``parallel_depth=0``): four serial scales at strides
    4..32. Only ``forward_intermediates`` differs from timm's: the scales are written out one by one
    (a scale pruned by ``prune_intermediate_layers`` is None and ends the walk), so it scripts."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The scale maps picked by ``indices`` (int: last n; None: all; ``norm``: norm4 on the last
        scale's), and unless ``intermediates_only`` the final tokens (normed when all four scales ran)."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(4, indices)
        last = max_index if stop_early and not torch.jit.is_scripting() else 3
        tokens = insert_cls(self.patch_embed1(x), self.cls_token1)
        for block1 in self.serial_blocks1:
            tokens = block1(tokens, size=self.patch_embed1.grid_size)
        scales, sizes = [tokens], [self.patch_embed1.grid_size]
        if self.patch_embed2 is not None and last >= 1:
            tokens = insert_cls(self.patch_embed2(_token_map(tokens, sizes[-1])), self.cls_token2)
            for block2 in self.serial_blocks2:
                tokens = block2(tokens, size=self.patch_embed2.grid_size)
            scales.append(tokens)
            sizes.append(self.patch_embed2.grid_size)
            if self.patch_embed3 is not None and last >= 2:
                tokens = insert_cls(self.patch_embed3(_token_map(tokens, sizes[-1])), self.cls_token3)
                for block3 in self.serial_blocks3:
                    tokens = block3(tokens, size=self.patch_embed3.grid_size)
                scales.append(tokens)
                sizes.append(self.patch_embed3.grid_size)
                if self.patch_embed4 is not None and last >= 3:
                    tokens = insert_cls(self.patch_embed4(_token_map(tokens, sizes[-1])), self.cls_token4)
                    for block in self.serial_blocks4:
                        tokens = block(tokens, size=self.patch_embed4.grid_size)
                    scales.append(tokens)
                    sizes.append(self.patch_embed4.grid_size)
        intermediates: List[torch.Tensor] = []
        for index, scale in enumerate(scales):
            if index in take_indices:
                if norm and index == 3 and self.norm4 is not None:
                    scale = self.norm4(scale)
                intermediates.append(_token_map(scale, sizes[index]))
        if intermediates_only:
            return intermediates
        if len(scales) < 4 or self.norm4 is None:
            return scales[-1], intermediates  # stopped early or pruned: no final norm
        return self.norm4(scales[-1]), intermediates


def _create_serial(variant: str, pretrained: bool = False, **kwargs: Any) -> SerialCoaT:
    kwargs.pop("parallel_depth", None)
    out_indices = kwargs.pop("out_indices", 4)
    # The pretrained weights are those of the full model (its serial blocks load; the rest is unused).
    return build_model_with_cfg(
        SerialCoaT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **COAT_CONFIGS[variant], parallel_depth=0, **kwargs,
    )


@register_model
def coat_tiny_serial(pretrained: bool = False, **kwargs: Any) -> SerialCoaT:
    """CoaT Tiny's serial blocks only (strides 4..32, 152 channels each)."""
    return _create_serial("coat_tiny", pretrained, **kwargs)


@register_model
def coat_small_serial(pretrained: bool = False, **kwargs: Any) -> SerialCoaT:
    """CoaT Small's serial blocks only (strides 4..32, 152/320/320/320 channels)."""
    return _create_serial("coat_small", pretrained, **kwargs)
