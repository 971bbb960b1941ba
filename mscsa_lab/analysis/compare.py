"""Backbones with and without MSCSA side by side, in the form of the paper's Table 6.

The baseline is the backbone as timm builds it: with its own classifier for classification, as a
``features_only`` model for dense prediction (the MSCSA model then returns the four fused maps).
For ``task="segmentation"`` (TopFormer profiles only, the paper's Table 3) the baseline is
TopFormer's segmentation model with its SASE (``timm.create_model(name, task="dense")``) and
"+MSCSA" the same model with MSCSA in place of SASE; both return logits at stride 8.
The paper's figures are placed beside ours where it reports them: Table 6 for 224x224
classification, Table 3 (FLOPs only) for segmentation at 512x512.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd
import torch

from mscsa_lab.registry import parse_input_size
from mscsa_lab.io.export import ResultTable
from mscsa_lab.analysis.flops import flop_analysis, uncounted_note
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.backbones import create_timm_model
from mscsa_lab.registry import SEGMENTATION, create_mscsa_model, resolve_name
from mscsa_lab.analysis.profiler import CONVENTIONS, convention_factor
from mscsa_lab.presets import Profile

__all__ = ["ModelPair", "Configuration", "build_pair", "build_baseline", "measure_pair", "compare_backbones",
           "comparison_table", "as_configuration", "count_flops_and_uncounted"]


@dataclass(frozen=True)
class Configuration:
    """One row of a comparison: a profile or timm name with its own MSCSA settings, under a label
    (so the same backbone can appear with several configurations side by side), optionally at its own
    input size and task (a configuration pinned in the Build tab keeps the ones it was built with).
    ``modified``: its MSCSA settings differ from the profile's, so the paper's figures do not apply."""

    label: str
    name: str
    settings: tuple[tuple[str, Any], ...] = ()
    input_size: tuple[int, int] | None = None
    task: str | None = None
    modified: bool = False

    @property
    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)


def as_configuration(item: Any, **settings: Any) -> Configuration:
    """A name (with the comparison's shared settings), a ready configuration, or a ``workflows.ModelSpec``
    (its own label and settings)."""
    if isinstance(item, Configuration):
        return item
    if hasattr(item, "settings") and hasattr(item, "label") and hasattr(item, "backbone"):  # a ModelSpec
        # An unmodified profile keeps the paper's title ("PVTv2-B0"): the label only names what differs.
        own_label = item.label if item.label != item.profile else ""
        return Configuration(label=own_label, name=item.profile or item.backbone, settings=tuple(item.settings),
                             input_size=tuple(item.input_size), task=item.task, modified=item.modified)
    name = getattr(item, "name", item)
    return Configuration(label="", name=str(name), settings=tuple(sorted(settings.items())), modified=bool(settings))


@dataclass
class ModelPair:
    """FLOPs (multiply-adds) and parameters of one backbone alone and with MSCSA."""

    name: str
    backbone: str
    flops: int
    flops_mscsa: int
    params: int
    params_mscsa: int
    uncounted_ops: dict[str, int]
    paper: dict[str, float]
    input_size: tuple[int, int] = (224, 224)
    task: str = "classification"
    fps: float | None = None
    fps_mscsa: float | None = None
    dfps_interval: tuple[float, float] | None = None  # 95% interval of dFPS (%), when measured interleaved
    from_table: bool = False  # counted when the shipped table was made (analysis.known_costs), not on this request


def count_flops_and_uncounted(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore's total multiply-adds of ``model`` on ``x`` and the operators it did not count."""
    analysis = flop_analysis(model, x)
    return analysis.total(), dict(analysis.unsupported_ops())


def build_baseline(name: str | Profile, size: tuple[int, int], task: str) -> torch.nn.Module:
    """The backbone alone as timm builds it, the left side of a comparison (in eval mode)."""
    label, profile = resolve_name(name)
    base_kwargs: dict[str, Any] = {}
    if task == "dense":
        base_kwargs["features_only"] = True
    elif task == SEGMENTATION:
        base_kwargs["task"] = "dense"  # TopFormer's timm entry point builds TopFormerSeg for task="dense"
    return create_timm_model(profile.baseline_model if profile else label, size, **base_kwargs).eval()


def build_pair(
    name: str | Profile,
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    **settings: Any,
) -> tuple[str, Profile | None, torch.nn.Module, torch.nn.Module]:
    """(label, profile or None, backbone alone as timm builds it, backbone+MSCSA), both in eval mode.
    Segmentation (TopFormer profiles): TopFormer's segmentation model with SASE, and with MSCSA."""
    height, width = parse_input_size(*input_size)
    label, profile = resolve_name(name)
    if profile is not None:
        profile.require_available()
    model = create_mscsa_model(profile, backbone=None if profile else label, task=task, img_size=(height, width),
                               **settings)
    base = build_baseline(profile or label, (height, width), task)
    return (profile.title if profile else label), profile, base, model.eval()


def measure_pair(
    name: str | Profile,
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    batch: int = 1,
    modified: bool | None = None,
    **settings: Any,
) -> ModelPair:
    """Build the backbone alone and with MSCSA and count both. ``modified``: the settings differ from the
    profile's (default: any settings given), so the paper's figures are left out."""
    size = parse_input_size(*input_size)
    modified = bool(settings) if modified is None else modified
    return measure_built_pair(*build_pair(name, size, task, **settings), size, task, batch, modified)


def measure_built_pair(label: str, profile: Profile | None, base: torch.nn.Module, model: torch.nn.Module,
                       size: tuple[int, int], task: str, batch: int = 1, modified: bool = False) -> ModelPair:
    """Count a built pair; the paper's figures stand beside an unmodified profile only."""
    height, width = size
    x = torch.zeros(batch, int(getattr(model, "in_chans", 3)), height, width)
    flops, uncounted = count_flops_and_uncounted(base, x)
    flops_mscsa, uncounted_mscsa = count_flops_and_uncounted(model, x)
    for op, count in uncounted_mscsa.items():
        uncounted[op] = max(uncounted.get(op, 0), count)
    return ModelPair(
        name=label,
        backbone=getattr(model, "backbone_name", None) or model.backbone.name,
        flops=flops,
        flops_mscsa=flops_mscsa,
        params=sum(p.numel() for p in base.parameters()),
        params_mscsa=sum(p.numel() for p in model.parameters()),
        uncounted_ops=uncounted,
        paper={} if modified else paper_figures(profile, task, size),
        input_size=tuple(size),
        task=task,
    )


# Paper keys of the segmentation figures (Table 3) -> the keys the table reads.
_SEGMENTATION_PAPER_KEYS = {"seg_flops_g": "flops_g", "seg_flops_mscsa_g": "flops_mscsa_g"}


def paper_figures(profile: Profile | None, task: str, size: tuple[int, int]) -> dict[str, float]:
    """The paper's figures for this comparison, under the table's keys: Table 6 (FLOPs, FPS, top-1)
    for classification at 224x224, Table 3 (FLOPs) for segmentation at 512x512, else none."""
    if profile is None:
        return {}
    if task == "classification" and tuple(size) == (224, 224):
        return {k: v for k, v in profile.paper.items() if k not in _SEGMENTATION_PAPER_KEYS}
    if task == SEGMENTATION and tuple(size) == (512, 512):
        return {ours: profile.paper[key] for key, ours in _SEGMENTATION_PAPER_KEYS.items() if key in profile.paper}
    return {}


def relative_change(new: float | None, old: float | None) -> float:
    if new is None or old is None or not old:
        return float("nan")
    return 100.0 * (new - old) / old


def comparison_table(
    pairs: Iterable[ModelPair],
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    batch: int = 1,
    convention: str = "mac",
    extra_metadata: dict[str, Any] | None = None,
) -> ResultTable:
    """The Table 6 layout: ours, then the paper's figures, for every pair."""
    factor = convention_factor(convention)
    nan = float("nan")
    rows, uncounted = [], {}
    pairs = list(pairs)
    with_fps = any(p.fps is not None for p in pairs)
    mixed = len({(tuple(p.input_size), p.task) for p in pairs}) > 1  # pinned configurations keep their own
    for pair in pairs:
        row = {"Model": pair.name}
        if mixed:
            row.update({"Input": f"{pair.input_size[0]}x{pair.input_size[1]}", "Task": pair.task})
        row.update({
            "FLOPs (G)": pair.flops * factor / 1e9,
            "+MSCSA FLOPs (G)": pair.flops_mscsa * factor / 1e9,
            "dFLOPs (%)": relative_change(pair.flops_mscsa, pair.flops),
            "Params (M)": pair.params / 1e6,
            "+MSCSA Params (M)": pair.params_mscsa / 1e6,
            "dParams (%)": relative_change(pair.params_mscsa, pair.params),
        })
        if with_fps:
            low, high = pair.dfps_interval or (nan, nan)
            row.update({"FPS": pair.fps if pair.fps is not None else nan,
                        "+MSCSA FPS": pair.fps_mscsa if pair.fps_mscsa is not None else nan,
                        "dFPS (%)": relative_change(pair.fps_mscsa, pair.fps),
                        "dFPS low (%)": low, "dFPS high (%)": high,
                        "FLOPs-proportional dFPS (%)": relative_change(pair.flops, pair.flops_mscsa)})
        paper = pair.paper
        row.update({
            "Paper FLOPs (G)": paper.get("flops_g", nan) * factor,
            "Paper +MSCSA FLOPs (G)": paper.get("flops_mscsa_g", nan) * factor,
            "Paper dFLOPs (%)": relative_change(paper.get("flops_mscsa_g"), paper.get("flops_g")),
            "Paper FPS (A100)": paper.get("fps", nan),
            "Paper +MSCSA FPS (A100)": paper.get("fps_mscsa", nan),
            "Paper dFPS (%)": relative_change(paper.get("fps_mscsa"), paper.get("fps")),
        })
        rows.append(row)
        for op, count in pair.uncounted_ops.items():
            uncounted[op] = max(uncounted.get(op, 0), count)
    height, width = input_size
    notes = [f"FLOPs convention: {CONVENTIONS[convention]}."]
    if task == SEGMENTATION:
        notes.append("Segmentation: TopFormer's model with its SASE, and with MSCSA in place of SASE (TopFormer's "
                     "injection and light head kept); logits at stride 8, the final upsampling not counted.")
        notes.append("Paper figures: Table 3 of Shang et al. (2023), ADE20K at 512x512, FLOPs only "
                     "(shown for 512x512 inputs).")
    else:
        notes.append("Paper figures: Table 6 of Shang et al. (2023), ImageNet-1k at 224x224, FPS on one NVIDIA A100; "
                     "beside the paper's own configurations only (a changed setting leaves them out).")
    notes.append(uncounted_note(uncounted))
    shipped = [pair.name for pair in pairs if pair.from_table]
    if shipped:
        from mscsa_lab.analysis.known_costs import source_note

        notes.append(source_note(f"Counts of {', '.join(shipped)} (profiles as shipped at 224x224)")
                     + ("; every other row was counted on this request." if len(shipped) < len(pairs) else "."))
    metadata = run_metadata(input_size=f"{height}x{width}", batch=batch, task=task, flops_convention=convention,
                            **(extra_metadata or {}))
    frame = pd.DataFrame(rows)
    paper_columns = [c for c in ("Model", "Input", "Task", "FLOPs (G)", "+MSCSA FLOPs (G)", "dFLOPs (%)",
                                 "Paper FLOPs (G)", "Paper +MSCSA FLOPs (G)") if c in frame.columns]
    where = "each at its own input size and task" if mixed else f"{task}, {height}x{width}"
    table = ResultTable(f"Backbones with and without MSCSA ({where})", frame, metadata, notes, paper_columns)
    table.compact_columns = ["Model", "Input", "Task", "FLOPs (G)", "+MSCSA FLOPs (G)", "dFLOPs (%)",
                             "+MSCSA Params (M)", "dParams (%)", "FPS", "+MSCSA FPS", "dFPS (%)", "dFPS low (%)",
                             "dFPS high (%)", "FLOPs-proportional dFPS (%)", "Paper FLOPs (G)",
                             "Paper +MSCSA FLOPs (G)", "Paper dFPS (%)"]
    return table


def compare_backbones(
    names: Iterable["str | Profile | Configuration"],
    input_size: tuple[int, int] = (224, 224),
    task: str = "classification",
    batch: int = 1,
    convention: str = "mac",
    progress: Callable[[float, str], None] | None = None,
    known: bool = False,
    **settings: Any,
) -> ResultTable:
    """Measure every named backbone (profile names or timm names, with ``settings``; or a ``Configuration``
    with its own settings and label) and return the Table 6 layout;
    ``progress(fraction, message)`` hears before and after each backbone (``compare --all`` takes a minute).
    ``known``: a profile as shipped at 224x224 takes its counts from ``analysis.known_costs`` (the Compare
    action's choice; the default counts every pair here)."""
    size = parse_input_size(*input_size)
    entries = [as_configuration(item, **settings) for item in names]
    pairs = []
    for index, entry in enumerate(entries):
        label = entry.label or entry.name
        if progress is not None:
            progress(index / len(entries), f"{label}: building and counting with and without MSCSA")
        pair = None
        if known and batch == 1 and not entry.settings:
            from mscsa_lab.analysis.known_costs import known_pair

            pair = known_pair(entry.name, entry.input_size or size, entry.task or task)
        if pair is None:
            pair = measure_pair(entry.name, entry.input_size or size, entry.task or task, batch, entry.modified,
                                **entry.settings_dict)
        if entry.label:
            pair.name = entry.label
        pairs.append(pair)
        if progress is not None:
            progress((index + 1) / len(entries), f"{label}: done")
    return comparison_table(pairs, size, task, batch, convention)
