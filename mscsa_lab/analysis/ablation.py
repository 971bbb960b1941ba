"""FLOPs and parameters of ablation variants, with the paper's Tables 4 and 5 beside them.

``ablation_flops("topformer_tiny", TABLE4_VARIANTS)`` builds each variant of a profile (the FFN
ratio rule included: variants without Intra-FFN use ``mlp_ratio_without_intra``), counts it with
fvcore, and returns a table with each row's step from the previous one and the paper's row and step
beside. The ablation runner (``mscsa_lab.train.ablation``) adds accuracy and FPS to these columns.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import torch

from mscsa_lab.analysis.flops import flop_analysis
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.config import ConfigError, TABLE4_VARIANTS, TABLE5_VARIANTS
from mscsa_lab.registry import create_mscsa_model, parse_input_size, resolve_name

__all__ = ["PAPER_TABLE4_M", "PAPER_TABLE5_M", "PAPER_TABLE2_INCREMENT_G", "ablation_flops", "variant_settings"]

# TopFormer-T + MSCSA, ImageNet classification at 224x224, FLOPs in M (Shang et al., Tables 4 and 5).
PAPER_TABLE4_M = {"none": 129.0, "+pcp": 129.0, "+intra_ffn": 130.0, "+msp": 132.0}
PAPER_TABLE5_M = {"dwconv": 132.0, "avgpool": 132.0, "cascade": 131.0, "single": 131.0}
# Table 2, dense prediction at 800x1280: GFLOPs MSCSA adds to each backbone (ResNet-50: 260 -> 271).
PAPER_TABLE2_INCREMENT_G = {"pvt_v2_b0": 3.0, "pvt_v2_b1": 6.0, "pvt_v2_b2": 13.0, "p2t_tiny": 7.0,
                            "swin_tiny": 17.0, "convnext_tiny": 17.0, "resnet50": 11.0}


def variant_settings(variants: Mapping[str, Mapping[str, Any]] | list[str]) -> dict[str, dict[str, Any]]:
    """Named variants as MSCSA settings: a mapping as given, or names of Table 4 / Table 5 variants."""
    if isinstance(variants, Mapping):
        return {name: dict(settings) for name, settings in variants.items()}
    known = {**TABLE4_VARIANTS, **TABLE5_VARIANTS}
    unknown = [name for name in variants if name not in known]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}: choose from {list(known)}")
    return {name: dict(known[name]) for name in variants}


def ablation_flops(
    name: str,
    variants: Mapping[str, Mapping[str, Any]] | list[str] = tuple(TABLE4_VARIANTS),  # type: ignore[assignment]
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    paper: Mapping[str, float] | None = None,
    **settings: Any,
) -> ResultTable:
    """FLOPs (M) and parameters (M) of each variant of a profile or timm backbone, in order, with the
    step from the previous row; ``paper`` (M per variant, default: Tables 4/5 for TopFormer-T at
    224x224 classification) is put beside. ``settings`` apply to every variant."""
    height, width = parse_input_size(*input_size)
    label, profile = resolve_name(name)
    chosen = variant_settings(list(variants) if not isinstance(variants, Mapping) else variants)
    if paper is None and profile is not None and profile.name == "topformer_tiny" and task == "classification" \
            and (height, width) == (224, 224):
        paper = {**PAPER_TABLE4_M, **PAPER_TABLE5_M}
    paper = dict(paper or {})
    x = torch.zeros(1, 3, height, width)
    rows, previous, previous_paper = [], None, None
    for variant, variant_settings_ in chosen.items():
        model = create_mscsa_model(profile, backbone=None if profile else label, task=task, num_classes=1000,
                                   img_size=(height, width), **{**settings, **variant_settings_})
        flops = flop_analysis(model, x).total() / 1e6
        row = {
            "Variant": variant,
            "FLOPs (M)": flops,
            "Step (M)": flops - previous if previous is not None else float("nan"),
            "Params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
            "FFN ratio": model.mscsa.config.ffn_ratio,
        }
        if paper:
            reference = paper.get(variant, float("nan"))
            row.update({
                "Paper FLOPs (M)": reference,
                "Paper step (M)": reference - previous_paper if previous_paper is not None else float("nan"),
                "Diff (M)": flops - reference,
            })
            previous_paper = reference
        rows.append(row)
        previous = flops
    title = f"Ablation variants of {profile.title if profile else label} + MSCSA ({task}, {height}x{width})"
    notes = ["FLOPs: fvcore, 1 multiply-add = 1 FLOP, attention matmuls counted; Step = change from the row above."]
    if paper:
        notes.append("Paper: Shang et al. (2023), Tables 4 (components, cumulative) and 5 (down-sampling).")
    metadata = run_metadata(model=label, input_size=f"{height}x{width}", task=task, variants=chosen,
                            settings={k: str(v) for k, v in settings.items()})
    frame = pd.DataFrame(rows)
    keep = [c for c in ("Variant", "FLOPs (M)", "Step (M)", "Params (M)", "Paper FLOPs (M)", "Paper step (M)")
            if c in frame.columns]
    return ResultTable(title, frame, metadata, notes, keep)
