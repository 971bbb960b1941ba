"""Train, evaluate and ablate: the training engine's runs as actions, costed and checked before they start."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.numbers import human_bytes
from mscsa_lab.stopping import StopFlag
from mscsa_lab.workflows.limits import ResourceError, ResourceLimits, guard
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.spec import ModelSpec

__all__ = ["train_action", "evaluate_action", "ablate_action", "curves_action", "training_spec", "check_disk",
           "train_summary", "planned_tokens", "tokens_text"]

DISK_HEADROOM_BYTES = 512 * 2**20


def training_spec(config: Any) -> ModelSpec:
    """The model a ``TrainConfig`` trains, as a ``ModelSpec`` (for its cost and its label): at the run's
    image size (the backbone's own when ``img_size`` is None) and, for distillation, with as many classes
    as the teacher has (from its class names file, its weights file's header or timm's configuration)."""
    config = config.with_resolved_size()
    num_classes = None
    if config.resolved_mode == "distill":
        from mscsa_lab.train.teacher import teacher_class_count

        num_classes = teacher_class_count(config.backbone or ModelSpec.resolve(config.profile).backbone,
                                          config.pretrained_file, config.teacher_classes)
    return ModelSpec.resolve(config.profile or config.backbone, backbone=config.backbone if config.profile else None,
                             input_size=(config.img_size, config.img_size), settings=dict(config.mscsa or {}),
                             backbone_kwargs=dict(config.backbone_kwargs or {}), num_classes=num_classes)


def planned_tokens(config: Any) -> dict[str, Any]:
    """How many tokens each key/value scale of the run's model has at its image size, before any run (the
    model on PyTorch's meta device: shapes only, no weights, no memory): as ``model.json``'s ``tokens``."""
    import torch

    config = config.with_resolved_size()
    spec = training_spec(config)
    model = spec.meta()
    size = config.img_size
    with torch.no_grad():
        stages = [tuple(f.shape[-2:]) for f in model.backbone(torch.zeros(1, 3, size, size, device="meta"))]
    summary = model.summary((size, size), stage_sizes=stages)
    return {"input_size": [size, size], "mscsa_grid": summary["mscsa_grid"], "scale_grids": summary["scale_grids"],
            "tokens_per_scale": summary["tokens_per_scale"], "stage_maps": [list(s) for s in stages]}


def tokens_text(tokens: Mapping[str, Any]) -> str:
    """One line: the tokens of each key/value scale at the input size (``X0 196 (14x14), ...``)."""
    height, width = tokens["input_size"]
    scales = ", ".join(f"X{i} {count} ({grid[0]}x{grid[1]})" for i, (count, grid) in
                       enumerate(zip(tokens["tokens_per_scale"], tokens["scale_grids"])))
    return f"at {height}x{width} MSCSA's keys and values have {scales} tokens per scale"


def check_disk(config: Any, spec: ModelSpec | None = None) -> None:
    """Refuse a run whose output folder's disk cannot hold it: the weights are written three times (the
    model, the resumable state, the state being replaced) plus the optimizer state, with some headroom."""
    if not config.out:
        return
    spec = spec or training_spec(config)
    needed = 5 * spec.estimate().param_bytes + DISK_HEADROOM_BYTES
    folder = Path(config.out).resolve()
    existing = next((p for p in [folder, *folder.parents] if p.exists()), folder.anchor)
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ResourceError(f"training {spec.label} writes about {human_bytes(needed)} of checkpoints, but "
                            f"{existing} has {human_bytes(free)} free: free some space or write the run elsewhere")


def train_summary(result: Any, name: str, out: str | None) -> str:
    """One line on how a run ended, for the terminal and the page."""
    top1, agreement = result.metrics.get("top1"), result.metrics.get("agreement_top1")
    if top1 is not None:
        accuracy = f"{top1:.1f}% val top-1"
    elif agreement is not None:
        accuracy = f"{agreement:.1f}% held-out agreement with the teacher (KL {result.metrics.get('kl', 0):.3f})"
    elif result.status == "stopped":
        accuracy = "held-out evaluation skipped (stopped)"
    else:
        accuracy = "no held-out images"
    verdict = {"completed": "finished", "stopped": "stopped", "max_steps": "reached its step limit"}
    saved = f" Saved in `{out}`." if out else ""
    return (f"**{name}** {verdict.get(result.status, result.status)}: {accuracy} after {result.steps} steps "
            f"({result.wall_s:.0f} s, {result.images_per_s:.1f} img/s).{saved}")


def train_action(config: Any, *, callbacks: Iterable[Callable] = (), stop: StopFlag = None,
                 limits: ResourceLimits | None = None, name: str | None = None) -> ActionResult:
    """Train as ``config`` (a ``train.TrainConfig``) says, after costing a training step at its batch and
    checking the disk; ``callbacks`` hear every ``ProgressEvent``; ``stop`` ends it cleanly."""
    from mscsa_lab.train import train

    config = config.validate()
    spec = training_spec(config)
    guard(spec, limits, batch=config.batch_size, training=True)
    if limits is not None:
        limits.check_count("epochs", config.epochs, "max_epochs")
        if config.max_steps is not None:
            limits.check_count("training steps", config.max_steps, "max_train_steps")
    check_disk(config, spec)
    result = train(config, callbacks=list(callbacks), stop=stop)
    label = name or spec.label
    return ActionResult(title=f"training {label}", summary=train_summary(result, label, config.out),
                        data={"result": result, "status": result.status})


def evaluate_action(model_dir: str, data: str, *, out: str | None = None, split: str = "val", batch: int = 64,
                    device: str = "auto", workers: int = 0, synthetic_count: int | None = None,
                    limits: ResourceLimits | None = None) -> ActionResult:
    """Top-1/top-k, per-class accuracy and the confusion matrix of a trained run on ``data``; for a distilled
    run (``model.json`` mode ``distill``) its agreement with its teacher on the images of ``data``."""
    from mscsa_lab.io.run_metadata import read_run_metadata
    from mscsa_lab.train import evaluate_trained
    from mscsa_lab.workflows.sources import run_spec

    meta = read_run_metadata(model_dir)
    guard(run_spec(meta), limits, batch=batch)
    if meta.get("mode") == "distill":
        return _evaluate_distilled(model_dir, data, out, split, batch, device)
    result, paths = evaluate_trained(model_dir, data, out, split=split, batch_size=batch, device=device,
                                     workers=workers, synthetic_count=synthetic_count)
    table = ResultTable(f"Per-class accuracy of {Path(model_dir).name} on {data} ({split})", result.per_class())
    summary = (f"top-1 {result.top1:.2f}%, top-{result.topk} {result.top5:.2f}%, loss {result.loss:.4f} "
               f"on {result.count} images")
    return ActionResult(title=table.title, table=table, summary=summary, files=[Path(p) for p in paths.values()],
                        data={"result": result})


def curves_action(folders: Sequence[str | Path], root: str | Path | None = None, title: str = "") -> ActionResult:
    """The loss and accuracy curves of several runs overlaid, read from their ``history.csv`` files (so they
    survive a page reload or a server restart); ``root``: the folder every run must be inside."""
    from mscsa_lab.io.curves import plot_run_curves, read_history

    histories = {Path(folder).name: read_history(folder, root) for folder in folders}
    figure = plot_run_curves(histories, title)
    lines = []
    for name, frame in histories.items():
        last = f", last at step {int(frame['step'].iloc[-1])}" if len(frame) else ""
        lines.append(f"**{name}**: {len(frame)} logged steps{last}")
    return ActionResult(title="Training curves of " + ", ".join(histories), figures={"curves": figure},
                        summary="; ".join(lines), data={"histories": histories})


def _evaluate_distilled(model_dir: str, data: str, out: str | None, split: str, batch: int,
                        device: str) -> ActionResult:
    import json

    import pandas as pd

    from mscsa_lab.train import evaluate_distilled
    from mscsa_lab.train.writing import write_text_file

    result = evaluate_distilled(model_dir, data, split=split, batch_size=batch, device=device)
    metrics = result.metrics()
    frame = pd.DataFrame([{"Images": metrics["images"], "Agreement top-1 (%)": metrics["agreement_top1"],
                           "Agreement top-5 (%)": metrics["agreement_top5"], "KL": metrics["kl"],
                           "Teacher confidence (%)": metrics["teacher_confidence"]}])
    table = ResultTable(f"Agreement of {Path(model_dir).name} with its teacher on {data} ({split})", frame)
    folder = Path(out) if out else Path(model_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    written = write_text_file(folder, "agreement.json", json.dumps(
        {**metrics, "model_dir": str(model_dir), "data": str(data), "split": split}, indent=2) + "\n")
    summary = (f"agreement with the teacher: top-1 {metrics['agreement_top1']:.2f}%, top-5 "
               f"{metrics['agreement_top5']:.2f}%, KL {metrics['kl']:.4f} on {metrics['images']} images")
    return ActionResult(title=table.title, table=table, summary=summary, files=[written], data={"result": result})


def ablate_action(name: str, variants: str | Sequence[str], *, seeds: Sequence[int] = (0, 1, 2),
                  train: Mapping[str, Any] | None = None, input_size: tuple[int, int] = (224, 224), fps: bool = True,
                  settings: Mapping[str, Any] | None = None, backbone_kwargs: Mapping[str, Any] | None = None,
                  out: str | None = None, flops_only: bool = False, progress: Callable[[float, str], None] | None = None,
                  stop: StopFlag = None, callbacks: Sequence[Callable] = ()) -> ActionResult:
    """The paper's Table 4/5 variants: with ``flops_only`` their FLOPs and parameters beside the paper in
    seconds; otherwise each variant trained with each seed, top-1 mean/std beside FLOPs and an FPS ratio."""
    from mscsa_lab.train.ablation import ablation_costs, resolve_variants, run_ablation

    chosen = resolve_variants(variants)  # unknown variants fail here, before anything runs
    if flops_only:
        table = ablation_costs(name, chosen, input_size, dict(settings or {}), dict(backbone_kwargs or {}) or None)
        return ActionResult(title=table.title, table=table)
    fields = dict(train or {})
    if backbone_kwargs:
        fields["backbone_kwargs"] = dict(backbone_kwargs)
    table = run_ablation(name, chosen, seeds=list(seeds), train=fields, input_size=input_size, fps=fps,
                         settings=dict(settings or {}), out=out, stop=stop, progress=progress, callbacks=callbacks)
    stopped = table.metadata.get("status") == "stopped"
    summary = (f"**ablation {name}** ({len(chosen)} variants x {len(seeds)} seeds) "
               + ("stopped: the table holds the runs that finished" if stopped else "finished")
               + f" in {table.metadata.get('wall_s', 0):.0f} s.")
    return ActionResult(title=table.title, table=table, summary=summary, data={"status": table.metadata.get("status")})

