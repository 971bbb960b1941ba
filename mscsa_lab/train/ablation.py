"""Ablation studies: train each MSCSA variant under the same data and seeds, and tabulate held-out
top-1 (mean and spread over seeds) beside FLOPs, parameters and an interleaved FPS ratio.

    from mscsa_lab.train.ablation import run_ablation
    table = run_ablation("demo", "table4", seeds=(0, 1), train={"max_steps": 200})
    print(table.to_markdown()); table.write("table4_study.csv")

``name``: ``"demo"`` (the demo model's shape: resnet10t at half width + a small MSCSA, quick on a
CPU), a Table 7 profile (e.g. ``topformer_tiny``) or a timm backbone. ``variants``: ``"table4"`` /
``"table5"``, names of Table 4/5 variants, or a mapping name -> MSCSA settings. Each variant's
settings go on top of the user's ``settings`` (and the demo's, for ``"demo"``). The first variant is
the reference of the FPS ratio and of the top-1 difference.

FLOPs and parameters come from ``mscsa_lab.analysis.ablation.ablation_flops`` at ``input_size``
(1000-class head, the FFN-ratio rule applied), the paper's Table 4/5 FLOPs beside them when they
apply (TopFormer-T at 224x224).
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from mscsa_lab.analysis.ablation import ablation_flops, variant_settings
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import device_description, run_metadata
from mscsa_lab.models.config import TABLE4_VARIANTS, TABLE5_VARIANTS
from mscsa_lab.train.config import TrainConfig, TrainingInputError
from mscsa_lab.train.progress import StopFlag, should_stop

__all__ = ["run_ablation", "ablation_costs", "resolve_variants", "DEMO_NAME", "DEMO_BACKBONE", "DEMO_BACKBONE_KWARGS",
           "DEMO_MSCSA", "QUICK_TRAIN", "AblationRun"]

DEMO_NAME = "demo"
DEMO_BACKBONE = "resnet10t"
DEMO_BACKBONE_KWARGS: dict[str, Any] = {"channels": [32, 64, 128, 256]}
DEMO_MSCSA: dict[str, Any] = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16)
# A quick study: the synthetic shapes, small images, a few hundred steps, evaluated once at the end.
QUICK_TRAIN: dict[str, Any] = dict(data="synthetic", img_size=64, batch_size=32, epochs=100, max_steps=300,
                                   eval_every=0, log_every=50)
# Fields the runner sets itself, per variant and seed.
_MANAGED = ("profile", "backbone", "seed", "out", "resume", "mscsa")

Progress = Callable[[float, str], None]


@dataclasses.dataclass
class AblationRun:
    variant: str
    seed: int
    top1: float
    status: str
    steps: int
    wall_s: float
    images_per_s: float
    out_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_variants(variants: str | Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``"table4"``/``"4"``, ``"table5"``/``"5"``, variant names or a mapping -> {name: MSCSA settings};
    an unknown name raises ``ValueError`` listing the known ones."""
    if isinstance(variants, str):
        key = variants.strip().lower().replace(" ", "")
        if key in ("4", "table4"):
            return variant_settings(list(TABLE4_VARIANTS))
        if key in ("5", "table5"):
            return variant_settings(list(TABLE5_VARIANTS))
        variants = [variants]
    if isinstance(variants, Mapping):
        bad = [name for name, value in variants.items() if not isinstance(value, Mapping)]
        if bad:
            raise TrainingInputError(f"variant(s) {bad} must map to MSCSA settings (a dict, e.g. {{'use_msp': False}})")
        chosen = variant_settings(variants)
    else:
        chosen = variant_settings(list(variants))
    if not chosen:
        raise TrainingInputError("give at least one variant: 'table4', 'table5', Table 4/5 names or a mapping")
    return chosen


def _slug(index: int, name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "variant"
    return f"{index:02d}-{text}"


def _model_spec(name: str, user_settings: Mapping[str, Any], backbone_kwargs: Mapping[str, Any] | None
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(TrainConfig model fields, MSCSA settings before the variant's, backbone kwargs)."""
    from mscsa_lab.registry import resolve_name

    if name.strip().lower() == DEMO_NAME:
        kwargs = {**DEMO_BACKBONE_KWARGS, **dict(backbone_kwargs or {})}
        return dict(backbone=DEMO_BACKBONE), {**DEMO_MSCSA, **user_settings}, kwargs
    label, profile = resolve_name(name)  # unknown names: ProfileError (a ValueError) listing the profiles
    fields = dict(profile=profile.name) if profile is not None else dict(backbone=label)
    return fields, dict(user_settings), dict(backbone_kwargs or {})


def _size(input_size: int | tuple[int, int]) -> tuple[int, int]:
    """A side or (height, width) as (height, width) integers."""
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


def _variant_costs(model_fields: Mapping[str, Any], base_settings: Mapping[str, Any],
                   backbone_kwargs: Mapping[str, Any], chosen: Mapping[str, Any],
                   input_size: tuple[int, int]) -> ResultTable:
    flops_settings = dict(base_settings)
    if backbone_kwargs:
        flops_settings["backbone_kwargs"] = dict(backbone_kwargs)
    return ablation_flops(model_fields.get("profile") or model_fields["backbone"], chosen, input_size,
                          **flops_settings)


def ablation_costs(
    name: str = DEMO_NAME,
    variants: str | Sequence[str] | Mapping[str, Mapping[str, Any]] = "table4",
    input_size: int | tuple[int, int] = (224, 224),
    settings: Mapping[str, Any] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> ResultTable:
    """The study's cost columns without training: each variant's FLOPs, parameters and step from the
    previous row for the same ``name`` (``"demo"`` included) that ``run_ablation`` would train, with
    the paper's Table 4/5 beside where they apply. Seconds, not minutes."""
    model_fields, base_settings, kwargs = _model_spec(name, dict(settings or {}), backbone_kwargs)
    return _variant_costs(model_fields, base_settings, kwargs, resolve_variants(variants), _size(input_size))


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = statistics.fmean(finite)
    std = statistics.stdev(finite) if len(finite) > 1 else float("nan")
    return mean, std


def run_ablation(
    name: str = DEMO_NAME,
    variants: str | Sequence[str] | Mapping[str, Mapping[str, Any]] = "table4",
    seeds: Sequence[int] = (0, 1, 2),
    train: Mapping[str, Any] | None = None,
    input_size: int | tuple[int, int] = (224, 224),
    fps: bool = True,
    progress: Progress | None = None,
    stop: StopFlag = None,
    settings: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    fps_settings: Any = None,
    callbacks: Sequence[Callable] = (),
) -> ResultTable:
    """Train every variant with every seed and return the study's table (one row per variant).

    train: ``TrainConfig`` fields for every run (``QUICK_TRAIN`` fills what is not given; ``mscsa``
        here counts as ``settings``, ``backbone_kwargs`` go to timm). The runner sets profile/backbone,
        seed and out itself.
    input_size: where FLOPs, parameters and FPS are measured (an int is square).
    fps: one interleaved ``compare_fps`` over fresh models of every variant (small batch, few
        repeats; ``fps_settings``, a ``BenchmarkSettings``, overrides), on the training device.
    progress: ``progress(fraction, message)`` before and after each run; ``callbacks`` go to the engine.
    stop: checked between and inside runs; the table then holds the runs that finished.
    out: a folder for each run's files (``out/NN-variant/seedK/``); None writes nothing.
    """
    from mscsa_lab.train.engine import train as train_run

    started = time.perf_counter()
    chosen = resolve_variants(variants)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise TrainingInputError(f"seeds must be one or more whole numbers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise TrainingInputError(f"seeds repeat {seeds}: each seed once, or the spread over seeds means nothing")
    input_size = _size(input_size)

    user = dict(train or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(user) - known)
    if unknown:
        raise TrainingInputError(f"unknown training setting(s) {unknown}: use TrainConfig fields "
                                 f"(e.g. max_steps, batch_size, img_size, data, lr)")
    managed = sorted(k for k in set(user) & set(_MANAGED) if k != "mscsa")
    if managed:
        raise TrainingInputError(f"the ablation runner sets {managed} itself: give the model as name, "
                                 "the seeds as seeds= and the output folder as out=")
    user_settings = {**dict(user.pop("mscsa", None) or {}), **dict(settings or {})}
    model_fields, base_settings, backbone_kwargs = _model_spec(name, user_settings, user.pop("backbone_kwargs", None))
    base = {**QUICK_TRAIN, **user}
    if "max_steps" in user and user["max_steps"] is None:
        base["max_steps"] = None  # epochs decide
        base["epochs"] = user.get("epochs", TrainConfig.epochs)

    # Every run's config, checked before minutes of training.
    configs: dict[tuple[str, int], TrainConfig] = {}
    for index, (variant, switches) in enumerate(chosen.items()):
        for seed in seeds:
            run_out = str(Path(out) / _slug(index, variant) / f"seed{seed}") if out is not None else None
            configs[(variant, seed)] = TrainConfig(
                **base, **model_fields, backbone_kwargs=dict(backbone_kwargs), mscsa={**base_settings, **switches},
                seed=seed, out=run_out, command=f"ablation {name}: {variant}, seed {seed}").validate()

    # FLOPs first: a variant that cannot be built fails here, not after training the others.
    flops_table = _variant_costs(model_fields, base_settings, backbone_kwargs, chosen, input_size)

    total = len(configs)
    runs: list[AblationRun] = []
    stopped = False
    for done, ((variant, seed), config) in enumerate(configs.items()):
        if should_stop(stop):
            stopped = True
            break
        if progress is not None:
            progress(done / total, f"run {done + 1}/{total}: {variant}, seed {seed}")
        result = train_run(config, callbacks=list(callbacks), stop=stop)
        top1 = result.metrics.get("top1")
        run = AblationRun(variant=variant, seed=seed, top1=float(top1) if top1 is not None else float("nan"),
                          status=result.status, steps=result.steps, wall_s=result.wall_s,
                          images_per_s=result.images_per_s,
                          out_dir=str(result.out_dir) if result.out_dir is not None else None)
        if result.status == "stopped":
            stopped = True  # a partly trained run is not comparable: recorded in metadata, kept out of the table
        runs.append(run)
        if progress is not None:
            progress((done + 1) / total, f"run {done + 1}/{total}: {variant}, seed {seed}: held-out top-1 "
                                         f"{run.top1:.2f}% ({result.steps} steps, {result.wall_s:.1f} s, "
                                         f"{result.images_per_s:.0f} images/s)")
        del result
        if stopped:
            break
    device = configs[next(iter(configs))].device
    from mscsa_lab.bench.settings import resolve_device

    resolved_device = resolve_device(device)

    ratios: dict[str, float] = {}
    fps_note = None
    if fps and not stopped:
        ratios, fps_note = _fps_ratios(configs, chosen, model_fields, base_settings, backbone_kwargs,
                                       input_size, resolved_device, fps_settings, progress)

    frame = _build_frame(chosen, flops_table.frame, runs, ratios if fps and not stopped else None)
    first = next(iter(configs.values()))
    train_facts = {k: v for k, v in first.to_dict().items()
                   if k not in ("profile", "backbone", "seed", "out", "command", "mscsa", "resume")}
    data = first.data if not first.is_synthetic else (
        f"synthetic shapes ({first.synthetic_train} training, {first.synthetic_val} held-out images)")
    metadata = run_metadata(
        model=name, backbone=model_fields.get("backbone"), profile=model_fields.get("profile"),
        backbone_kwargs=dict(backbone_kwargs), mscsa_settings=dict(base_settings), variants=chosen,
        seeds=list(seeds), data=data, training=train_facts, input_size=f"{input_size[0]}x{input_size[1]}",
        device=device_description(resolved_device), wall_s=round(time.perf_counter() - started, 1),
        runs={f"{r.variant} seed {r.seed}": r.to_dict() for r in runs}, status="stopped" if stopped else "completed",
        fps_settings=fps_note)
    title = (f"Ablation study of {name} + MSCSA: {len(chosen)} variants x {len(seeds)} seeds "
             f"({first.max_steps or first.epochs} {'steps' if first.max_steps else 'epochs'}, "
             f"img {first.img_size}, {'synthetic shapes' if first.is_synthetic else first.data})")
    notes = _notes(first, seeds, input_size, fps and not stopped, "Paper FLOPs (M)" in frame.columns, stopped)
    keep = [c for c in ("Variant", "FLOPs (M)", "Paper FLOPs (M)", "FPS ratio", "Top-1 mean (%)", "Top-1 std")
            if c in frame.columns]
    return ResultTable(title, frame, metadata, notes, keep)


def _fps_ratios(configs, chosen, model_fields, base_settings, backbone_kwargs, input_size, device,
                fps_settings, progress) -> tuple[dict[str, float], dict[str, Any]]:
    from mscsa_lab.bench.fps import compare_fps
    from mscsa_lab.bench.settings import BenchmarkSettings
    from mscsa_lab.registry import create_mscsa_model

    settings = fps_settings or BenchmarkSettings(device=str(device), batch=8, warmup=2, steps=3, repeats=5)
    models = {}
    for variant, switches in chosen.items():
        models[variant] = create_mscsa_model(
            model_fields.get("profile"), backbone=model_fields.get("backbone"), num_classes=1000,
            img_size=input_size, backbone_kwargs=dict(backbone_kwargs) or None, **{**base_settings, **switches})
    if progress is not None:
        progress(1.0, f"FPS: {len(models)} models interleaved at {input_size[0]}x{input_size[1]}, "
                      f"batch {settings.batch}, {settings.repeats} rounds")
    result = compare_fps(models, input_size, settings)
    return {name: result.ratio(name) for name in models}, dataclasses.asdict(settings)


def _build_frame(chosen: Mapping[str, Any], flops: pd.DataFrame, runs: list[AblationRun],
                 ratios: Mapping[str, float] | None) -> pd.DataFrame:
    by_variant = flops.set_index("Variant")
    rows = []
    reference_top1 = None
    for variant in chosen:
        done = [r for r in runs if r.variant == variant and r.status != "stopped"]
        mean, std = _mean_std([r.top1 for r in done])
        if reference_top1 is None:
            reference_top1 = mean
        row: dict[str, Any] = {
            "Variant": variant,
            "FLOPs (M)": float(by_variant.loc[variant, "FLOPs (M)"]),
            "Params (M)": float(by_variant.loc[variant, "Params (M)"]),
        }
        if "Paper FLOPs (M)" in by_variant.columns:
            row["Paper FLOPs (M)"] = float(by_variant.loc[variant, "Paper FLOPs (M)"])
        if ratios is not None:
            row["FPS ratio"] = float(ratios.get(variant, float("nan")))
        row.update({
            "Top-1 mean (%)": mean,
            "Top-1 std": std,
            "Top-1 diff": mean - reference_top1 if math.isfinite(mean) and math.isfinite(reference_top1)
            else float("nan"),
            "n": len(done),
            "Images/s": statistics.fmean([r.images_per_s for r in done]) if done else float("nan"),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def _notes(config: TrainConfig, seeds: Sequence[int], input_size: tuple[int, int], fps: bool, paper: bool,
           stopped: bool) -> list[str]:
    notes = [
        f"Top-1: held-out accuracy at the end of each run, mean and sample std over seeds {list(seeds)} "
        "(each seed gives every variant the same data split, order and initial random state); "
        "Top-1 diff: change of the mean from the first row.",
        "A difference smaller than about one std (or two, with so few seeds) is not a finding; n seeds "
        "give a rough spread only.",
        f"FLOPs/Params: fvcore at {input_size[0]}x{input_size[1]} with a 1000-class head (ablation_flops, FFN-ratio "
        "rule applied); they do not depend on training.",
    ]
    if config.is_synthetic:
        notes.append("Data: the synthetic shapes, trained from scratch for minutes; this checks that the variants "
                     "train and how they compare on an easy task, not ImageNet accuracy (the paper's Tables 4/5 "
                     "are 300-epoch ImageNet runs).")
    else:
        notes.append(f"Data: {config.data}; short runs rank variants only roughly, long schedules can reorder them.")
    if fps:
        notes.append("FPS ratio: each variant's throughput over the first row's, median of interleaved rounds, small "
                     "batch and few repeats on the training device; a ratio within ~5% on a shared CPU is noise.")
    if paper:
        notes.append("Paper FLOPs: Shang et al. (2023), Tables 4 and 5, TopFormer-T at 224x224.")
    notes.append("Images/s: training throughput (mean over seeds) including data loading; it shifts with machine "
                 "load and is not inference speed.")
    if stopped:
        notes.append("Stopped early: rows hold only the runs that finished (n says how many); FPS was skipped.")
    return notes
