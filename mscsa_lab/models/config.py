"""The MSCSA hyper-parameters as one validated dataclass.

Table 7 of the paper fixes six numbers per backbone (pooling size, squeeze ratio, depth, heads,
head dim, MLP ratio); everything else here is a switch for the paper's ablations (Tables 4 and 5)
or a choice the paper leaves open, kept explicit so that users can see and change it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from mscsa_lab.models.layers import ACTIVATIONS
from mscsa_lab.errors import UserError

__all__ = [
    "MSCSAConfig",
    "ConfigError",
    "UnknownArgumentError",
    "DOWNSAMPLE_STRATEGIES",
    "ATTENTION_IMPLS",
    "FUSION_ORDERS",
    "ABLATION_PRESETS",
    "TABLE4_VARIANTS",
    "TABLE5_VARIANTS",
    "WEIGHT_INITS",
    "parse_ratio",
]

DOWNSAMPLE_STRATEGIES = ("dwconv", "avgpool", "cascade", "single")
ATTENTION_IMPLS = ("sdpa", "explicit")
FUSION_ORDERS = ("conv_first", "upsample_first")
UPSAMPLE_MODES = ("bilinear", "nearest")
WEIGHT_INITS = ("zero_residual", "torch")
POOL_STRIDES = (4, 8, 16, 32, 64, 128)

# Table 4 of the paper, cumulative: each variant adds one component to the previous one. Variants
# without Intra-FFN use ``mlp_ratio_without_intra`` for their FFNs when a profile sets it (the paper
# raised TopFormer's FFN ratio only because Intra-FFN replaced half of the FFNs).
TABLE4_VARIANTS: dict[str, dict[str, Any]] = {
    "none": dict(use_pcp=False, use_intra_ffn=False, use_msp=False),
    "+pcp": dict(use_pcp=True, use_intra_ffn=False, use_msp=False),
    "+intra_ffn": dict(use_pcp=True, use_intra_ffn=True, use_msp=False),
    "+msp": dict(use_pcp=True, use_intra_ffn=True, use_msp=True),
}
# Table 5: how the multi-scale keys/values are made, on the full model.
TABLE5_VARIANTS: dict[str, dict[str, Any]] = {
    "dwconv": dict(use_pcp=True, use_intra_ffn=True, use_msp=True, downsample="dwconv"),
    "avgpool": dict(use_pcp=True, use_intra_ffn=True, use_msp=True, downsample="avgpool"),
    "cascade": dict(use_pcp=True, use_intra_ffn=True, use_msp=True, downsample="cascade"),
    "single": dict(use_pcp=True, use_intra_ffn=True, use_msp=True, downsample="single"),
}
ABLATION_PRESETS: dict[str, dict[str, Any]] = {**TABLE4_VARIANTS, **TABLE5_VARIANTS}


class ConfigError(UserError, ValueError):
    """An impossible MSCSA configuration; the message says what to change."""


class UnknownArgumentError(UserError, TypeError):
    """A keyword a model constructor does not take. A ``TypeError``, as Python raises for any
    function called with an unknown keyword (timm's model contract checks for it); the message
    lists the keywords the model takes."""


def parse_ratio(value: Any) -> float | None:
    """Read a squeeze ratio written as a number, a fraction string ("5/8") or none ("-", "none")."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "-", "none", "null"):
            return None
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"squeeze_ratio {value!r} is not a number or fraction; write e.g. 0.625, '5/8' or 'none'"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"squeeze_ratio must be a number, a fraction string or none, got {value!r}")
    return float(value)


@dataclass
class MSCSAConfig:
    """Hyper-parameters of one MSCSA module (names follow timm: ``key_dim``, ``attn_ratio``...).

    pool_stride: the multi-stage map's resolution as an output stride ("1/32" -> 32).
    dense_pool_stride: the same for dense prediction (Table 7's value in brackets); None = pool_stride.
    squeeze_ratio: per-stage 1x1 conv+BN ratio Ci -> round(Ci * r); None = no squeeze conv.
    key_dim: per-head query/key dim d; values get ``attn_ratio * d`` (LeViT; the paper uses 2).
    act_layer: the FFN/Intra-FFN activation (the paper names none; Hardswish by default).
    mlp_ratio_without_intra: the FFN ratio of a model without Intra-FFN (``use_intra_ffn=False``);
        None = ``mlp_ratio``. Table 4's rule for TopFormer: 3 with Intra-FFN, 2 without.
    use_pcp / use_intra_ffn / use_msp: the Table 4 component switches.
    downsample: how the multi-scale K/V inputs are made (Table 5): parallel depthwise convs
        ("dwconv", default), average pooling ("avgpool"), a cascade X2 = DWConv(X1) ("cascade") or
        only the 2x scale ("single").
    attn_impl: "sdpa" (torch's fused kernel) or "explicit" (softmax(QK^T/sqrt(d))V written out).
    fusion_order: dense fusion of Fig. 5: "conv_first" runs the injection convs at the low MSCSA
        resolution and upsamples their results (TopFormer's order), "upsample_first" the reverse.
    upsample_mode: how stage maps smaller than the pooling target are enlarged (only when pooling
        finer than 1/32, e.g. CoaT's 1/16): "bilinear" (default) or "nearest".
    weight_init: "zero_residual" (LeViT/TopFormer: the BN closing each residual branch starts at 0,
        so a fresh block is the identity; convs truncated-normal with std 1/sqrt(fan-in)) or "torch" (PyTorch's
        defaults, every BN weight 1).
    """

    pool_stride: int = 32
    dense_pool_stride: int | None = None
    squeeze_ratio: float | None = None
    depth: int = 1
    num_heads: int = 8
    key_dim: int = 32
    attn_ratio: float = 2.0
    mlp_ratio: float = 2.0
    mlp_ratio_without_intra: float | None = None
    act_layer: str = "hardswish"
    drop_path: float = 0.0
    use_pcp: bool = True
    use_intra_ffn: bool = True
    use_msp: bool = True
    downsample: str = "dwconv"
    attn_impl: str = "sdpa"
    fusion_order: str = "conv_first"
    upsample_mode: str = "bilinear"
    weight_init: str = "zero_residual"
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.squeeze_ratio = parse_ratio(self.squeeze_ratio)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, in_channels: tuple[int, ...] | None = None) -> "MSCSAConfig":
        """Raise ``ConfigError`` naming the field and what to change; return self when valid.

        With ``in_channels`` (the backbone's four stage widths) also checks the squeezed widths.
        """
        problems: list[str] = []

        def need_int(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be a whole number between {low} and {high}, got {value!r}")
            elif not low <= value <= high:
                problems.append(f"{name}={value} is out of range: choose {low}..{high}")

        for name in ("pool_stride", "dense_pool_stride"):
            value = getattr(self, name)
            if name == "dense_pool_stride" and value is None:
                continue
            if value not in POOL_STRIDES or isinstance(value, bool):
                problems.append(
                    f"{name}={value!r} is not a supported pooling size: use one of "
                    f"{list(POOL_STRIDES)} (1/4 .. 1/128 of the input)"
                )
        need_int("depth", 1, 24)
        need_int("num_heads", 1, 64)
        need_int("key_dim", 1, 512)
        for name, low, high in (("mlp_ratio", 0.0, 16.0), ("mlp_ratio_without_intra", 0.0, 16.0),
                                ("attn_ratio", 0.0, 16.0), ("squeeze_ratio", 0.0, 4.0)):
            value = getattr(self, name)
            if value is None and name in ("squeeze_ratio", "mlp_ratio_without_intra"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
            elif not low < value <= high:
                problems.append(f"{name}={value} is out of range: choose a value in ({low}, {high}]")
        if not isinstance(self.drop_path, (int, float)) or not 0.0 <= self.drop_path < 1.0:
            problems.append(f"drop_path={self.drop_path!r} must be in [0, 1)")
        if not isinstance(self.act_layer, str) or self.act_layer.lower() not in ACTIVATIONS:
            problems.append(f"act_layer={self.act_layer!r} is unknown: choose one of {sorted(ACTIVATIONS)}")
        for name, allowed in (
            ("downsample", DOWNSAMPLE_STRATEGIES),
            ("attn_impl", ATTENTION_IMPLS),
            ("fusion_order", FUSION_ORDERS),
            ("upsample_mode", UPSAMPLE_MODES),
            ("weight_init", WEIGHT_INITS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} is unknown: choose one of {list(allowed)}")
        for name in ("use_pcp", "use_intra_ffn", "use_msp"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not problems and self.value_dim != self.attn_ratio * self.key_dim:
            problems.append(
                f"attn_ratio * key_dim = {self.attn_ratio * self.key_dim} must be a whole number "
                "(it is the value head dim)"
            )
        if not problems and in_channels is not None:
            widths = self.squeezed_channels(in_channels)
            if min(widths) < 1:
                problems.append(
                    f"squeeze_ratio={self.squeeze_ratio} leaves a stage with {min(widths)} channels "
                    f"(backbone widths {list(in_channels)}): raise squeeze_ratio"
                )
        if problems:
            raise ConfigError("invalid MSCSA configuration: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def value_dim(self) -> int:
        return int(round(self.attn_ratio * self.key_dim))

    def squeezed_channels(self, in_channels: tuple[int, ...] | list[int]) -> list[int]:
        """Per-stage widths Ci' after the optional squeeze conv."""
        if self.squeeze_ratio is None:
            return list(in_channels)
        return [int(round(c * self.squeeze_ratio)) for c in in_channels]

    @property
    def ffn_ratio(self) -> float:
        """The FFN expansion ratio in effect (Table 4's rule: a smaller one without Intra-FFN)."""
        if not self.use_intra_ffn and self.mlp_ratio_without_intra is not None:
            return self.mlp_ratio_without_intra
        return self.mlp_ratio

    def pool_stride_for(self, task: str) -> int:
        if task == "dense" and self.dense_pool_stride is not None:
            return self.dense_pool_stride
        return self.pool_stride

    def replace(self, **changes: Any) -> "MSCSAConfig":
        """A validated copy with some fields changed (unknown field names are an error)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown MSCSA setting(s) {sorted(unknown)}; known: "
                f"{sorted(f.name for f in dataclasses.fields(self) if f.name != 'extra')}"
            )
        return dataclasses.replace(self, **changes)

    def with_ablation(self, preset: str) -> "MSCSAConfig":
        """Apply a Table 4 variant (none, +pcp, +intra_ffn, +msp = full) or a Table 5 variant
        (dwconv, avgpool, cascade, single)."""
        if preset not in ABLATION_PRESETS:
            raise ConfigError(f"unknown ablation preset {preset!r}: choose one of {list(ABLATION_PRESETS)}")
        return self.replace(**ABLATION_PRESETS[preset])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MSCSAConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown MSCSA setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
