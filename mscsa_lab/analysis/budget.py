"""Fit MSCSA under a FLOPs budget, the paper's rule for parallel attachment ("about 10% of the
backbone's FLOPs").

Only the add-on is re-counted per candidate (aggregation, blocks, head or fusion on stage maps of
the right shapes), so a search over a few dozen configurations costs seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import pandas as pd
import torch

from mscsa_lab.registry import parse_input_size, resolve_name
from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.analysis.flops import flop_analysis
from mscsa_lab.models.backbones import StageFeatures, create_timm_model
from mscsa_lab.models.mscsa_net import MSCSAAddOn
from mscsa_lab.stopping import Cancelled, StopFlag, should_stop

__all__ = ["BudgetResult", "fit_flops_budget", "SQUEEZE_GRID"]

# Candidate squeeze ratios: none (no conv), then 16/16 down to 1/16.
SQUEEZE_GRID: list[Fraction | None] = [None] + [Fraction(k, 16) for k in range(16, 0, -1)]


@dataclass
class BudgetResult:
    backbone: str
    cap: float
    config: MSCSAConfig | None
    backbone_flops: int
    added_flops: int | None
    candidates: pd.DataFrame = field(repr=False)
    message: str = ""

    @property
    def share(self) -> float | None:
        return None if self.added_flops is None else self.added_flops / self.backbone_flops


def _head_dim_candidates(num_heads: int, key_dim: int) -> list[tuple[int, int]]:
    """(heads, d) pairs from the given one downwards: d shrinks by eighths, then heads halve."""
    pairs = []
    heads = num_heads
    while heads >= 1:
        for eighths in range(8, 3, -1):
            d = max(1, round(key_dim * eighths / 8))
            if (heads, d) not in pairs:
                pairs.append((heads, d))
        if heads == 1:
            break
        heads = max(1, heads // 2)
    return pairs


def _ratio_text(ratio: Fraction | None) -> str:
    return "none" if ratio is None else str(ratio)


def fit_flops_budget(
    name: str,
    cap: float = 0.10,
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    num_classes: int = 1000,
    progress: Callable[[float, str], None] | None = None,
    stop: StopFlag = None,
    **settings: Any,
) -> BudgetResult:
    """The configuration whose added FLOPs come closest to ``cap`` x backbone FLOPs without
    passing it: squeeze ratio first (keeping the profile's heads and head dim), and only if no
    ratio fits, smaller head dims and then fewer heads. ``progress(fraction, message)`` hears after
    every count; ``stop`` ends the search (``Cancelled``) between counts."""
    if not isinstance(cap, (int, float)) or not 0 < cap <= 10:
        raise ConfigError(f"cap={cap!r} must be a fraction of the backbone's FLOPs in (0, 10], e.g. 0.1 for 10%")
    height, width = parse_input_size(*input_size)
    label, profile = resolve_name(name)
    if profile is not None:
        backbone, baseline_name, base = profile.backbone, profile.baseline_model, profile.config
    else:
        backbone, baseline_name, base = label, label, MSCSAConfig()
    if settings:
        base = base.replace(**settings)

    def report(message: str, fraction: float) -> None:
        if should_stop(stop):
            raise Cancelled("the budget search was cancelled")
        if progress is not None:
            progress(min(fraction, 1.0), message)

    report(f"{backbone}: counting the backbone's FLOPs", 0.0)
    x = torch.zeros(1, 3, height, width)
    features_model = StageFeatures(backbone, img_size=(height, width)).eval()
    if task == "dense":
        baseline = features_model
    else:
        baseline = create_timm_model(baseline_name, (height, width), num_classes=num_classes)
    backbone_flops = flop_analysis(baseline, x).total()
    features_flops = backbone_flops if baseline is features_model else flop_analysis(features_model, x).total()
    with torch.no_grad():
        stage_maps = tuple(features_model(x))
    channels = features_model.channels
    limit = cap * backbone_flops

    tried: list[dict[str, Any]] = []
    counted: dict[tuple[int, int, Fraction | None], tuple[int, MSCSAConfig] | None] = {}
    pairs = _head_dim_candidates(base.num_heads, base.key_dim)
    numeric_ratios = [r for r in SQUEEZE_GRID if r is not None]
    # At most: the smallest overall, then per pair its smallest, "none" and a bisection of the ratios.
    expected = 2 + len(pairs) * (2 + max(1, len(numeric_ratios).bit_length()))

    def added_flops(heads: int, key_dim: int, ratio: Fraction | None) -> tuple[int, MSCSAConfig] | None:
        key = (heads, key_dim, ratio)
        if key in counted:
            return counted[key]
        config = base.replace(num_heads=heads, key_dim=key_dim, squeeze_ratio=None if ratio is None else float(ratio))
        if min(config.squeezed_channels(channels)) < 1:
            counted[key] = None
            return None
        with torch.device("meta"):  # counting needs shapes, not values: no weights drawn per candidate
            addon = MSCSAAddOn(channels, config, task, num_classes)
        addon = addon.to_empty(device="cpu").eval()
        added = features_flops + flop_analysis(addon, stage_maps).total() - backbone_flops
        tried.append(dict(heads=heads, key_dim=key_dim, squeeze_ratio=_ratio_text(ratio), added_gflops=added / 1e9,
                          share_pct=100 * added / backbone_flops, fits=added <= limit))
        counted[key] = (added, config)
        report(f"{backbone}: {heads} heads x {key_dim}, squeeze {_ratio_text(ratio)} adds "
               f"{100 * added / backbone_flops:.1f}%", len(tried) / expected)
        return counted[key]

    def fits(result: tuple[int, MSCSAConfig] | None) -> bool:
        return result is not None and result[0] <= limit

    # FLOPs grow with the squeeze ratio, the heads and the head dim, so: if the smallest setting of
    # a (heads, d) pair does not fit, none of that pair does; down the ratios, the first that fits is
    # the closest to the cap, found by bisection. "none" (no squeeze conv) is tried on its own.
    chosen: tuple[int, MSCSAConfig] | None = None
    if fits(added_flops(*pairs[-1], numeric_ratios[-1])):
        for heads, key_dim in pairs:
            smallest = added_flops(heads, key_dim, numeric_ratios[-1])
            if not fits(smallest):
                continue
            fitting = [smallest] + [r for r in (added_flops(heads, key_dim, None),) if fits(r)]
            low, high = 0, len(numeric_ratios) - 1  # ratios[high] fits; find the first (largest) that fits
            while low < high:
                middle = (low + high) // 2
                if fits(added_flops(heads, key_dim, numeric_ratios[middle])):
                    high = middle
                else:
                    low = middle + 1
            fitting.append(added_flops(heads, key_dim, numeric_ratios[high]))
            chosen = max((r for r in fitting if r is not None), key=lambda item: item[0])
            break
    report(f"{backbone}: done after {len(tried)} counts", 1.0)

    candidates = pd.DataFrame(tried)
    if not tried:
        raise ConfigError(
            f"{backbone}'s stage widths {channels} are too narrow to squeeze by 1/16 or more: no configuration "
            "can be tried; give a squeeze_ratio yourself or pick a wider backbone"
        )
    if chosen is None:
        message = (f"no configuration fits under {100 * cap:.1f}% of {backbone}'s {backbone_flops / 1e9:.3f} GFLOPs "
                   f"(smallest tried adds {candidates['share_pct'].min():.1f}%): raise the cap")
        return BudgetResult(backbone, cap, None, backbone_flops, None, candidates, message)
    added, config = chosen
    ratio = "none" if config.squeeze_ratio is None else str(Fraction(config.squeeze_ratio).limit_denominator(16))
    changed = (config.num_heads, config.key_dim) != (base.num_heads, base.key_dim)
    message = (
        f"chose squeeze ratio {ratio} with {config.num_heads} heads of dim {config.key_dim}"
        + (f" (reduced from {base.num_heads} x {base.key_dim}: no squeeze ratio fitted)" if changed else "")
        + f": MSCSA adds {added / 1e9:.3f} GFLOPs = {100 * added / backbone_flops:.1f}% of {backbone}'s "
        f"{backbone_flops / 1e9:.3f} GFLOPs (cap {100 * cap:.1f}%, {height}x{width}, {task})"
    )
    return BudgetResult(backbone, cap, config, backbone_flops, added, candidates, message)
