"""What a training run writes: ``model.safetensors``, ``model.json`` (everything ``load_trained``
needs to rebuild the model, and how it was made) and ``history.csv`` (one row per logged step).
"""
from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from torch import nn

from mscsa_lab.train.config import TrainConfig
from mscsa_lab.train.distributed import DistInfo
from mscsa_lab.train.state import readable_by_umask

__all__ = ["MODEL_FILE", "METADATA_FILE", "HISTORY_FILE", "FORMAT", "HISTORY_COLUMNS", "model_info", "token_grid",
           "write_outputs", "write_history", "metrics_of", "attach_eval"]

MODEL_FILE = "model.safetensors"
METADATA_FILE = "model.json"
HISTORY_FILE = "history.csv"
FORMAT = "mscsa_lab.trained/1"
# One row per logged optimizer step; the held-out columns are filled on the rows after which an
# evaluation ran (the end of an epoch, the end of the run). Distillation runs fill val_agreement
# (top-1 agreement with the teacher, %) and val_kl instead of val_top1/val_top5.
HISTORY_COLUMNS = ["step", "epoch", "train_loss", "train_top1", "lr", "images_per_s", "elapsed_s", "val_top1",
                   "val_top5", "val_loss", "val_agreement", "val_kl"]


def token_grid(model: nn.Module, height: int, width: int) -> dict[str, Any]:
    """How many tokens MSCSA works with at this input size: its grid (the queries), each key/value
    scale's grid, and the backbone's stage maps (``MSCSANet.summary``)."""
    summary = model.summary((height, width))
    return {"input_size": [height, width], "mscsa_grid": summary["mscsa_grid"], "scale_grids": summary["scale_grids"],
            "tokens_per_scale": summary["tokens_per_scale"],
            "stage_maps": [stage["map_size"] for stage in summary["stages"]]}


def model_info(model: nn.Module, config: TrainConfig, mode: str, classes: list[str], data_config: dict[str, Any],
               metrics: dict[str, Any], source, info: DistInfo, status: str, steps: int, total_steps: int,
               epochs_done: float, wall: float, rate: float, sync_bn: bool, augmentation: dict[str, Any],
               teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``model.json``."""
    from mscsa_lab.io.metadata import run_metadata

    backbone_kwargs = dict(config.backbone_kwargs)
    if config.backbone_drop_path:
        backbone_kwargs["drop_path_rate"] = config.backbone_drop_path
    _, height, width = data_config["input_size"]
    command = config.command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    training = {
        "mode": mode, "status": status, "steps": steps, "total_steps": total_steps, "epochs": config.epochs,
        "epochs_done": epochs_done, "max_steps": config.max_steps, "batch_size": config.batch_size,
        "accum_steps": config.accum_steps, "world_size": info.world_size,
        "global_batch": config.batch_size * config.accum_steps * info.world_size, "lr": config.resolved_lr,
        "opt": config.opt, "weight_decay": config.weight_decay, "sched": config.sched,
        "warmup_steps": config.warmup_steps, "smoothing": config.smoothing, "mixup": config.mixup,
        "cutmix": config.cutmix, "ema": config.ema, "amp": config.amp, "sync_bn": bool(sync_bn),
        "batchnorm_stats": ("synchronised (SyncBatchNorm)" if sync_bn else
                            "averaged over processes before evaluating and saving" if info.world_size > 1 else
                            "one process"),
        "augmentation": augmentation, "seed": config.seed, "val_fraction": config.val_fraction,
        "pretrained": config.pretrained, "pretrained_file": config.pretrained_file, "data": source.to_dict(),
        "wall_s": round(wall, 2), "images_per_s": round(rate, 2), "config": config.to_dict(),
    }
    if teacher is not None:
        training["temperature"] = config.temperature
    result = {
        "format": FORMAT,
        "weights": MODEL_FILE,
        "weights_kind": "ema" if config.ema else "model",
        "mode": mode,
        "profile": config.profile,
        "backbone": model.backbone.name,
        "backbone_kwargs": backbone_kwargs,
        "mscsa": model.config.to_dict(),
        "task": model.task,
        "num_classes": model.num_classes,
        "classes": list(classes),
        "input_size": [int(height), int(width)],
        "preprocessing": {"mean": list(data_config["mean"]), "std": list(data_config["std"]),
                          "interpolation": data_config["interpolation"], "crop_pct": data_config["crop_pct"],
                          "crop_mode": data_config.get("crop_mode", "center")},
        "tokens": token_grid(model, int(height), int(width)),
        "metrics": metrics,
        "training": training,
        "parameters": sum(p.numel() for p in model.parameters()),
        "metadata": run_metadata(device_type=info.device.type),
        "command": command,
    }
    if teacher is not None:
        result["teacher"] = teacher
    return result


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})


def write_outputs(out: Path, model: nn.Module, info_json: dict[str, Any], step_history: list[dict[str, Any]]) -> None:
    """The weights (written to a temporary name, then renamed), ``model.json`` and ``history.csv``."""
    from mscsa_lab.io.checkpoints import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{MODEL_FILE}.tmp"
    save_checkpoint(model, temporary, metadata={"format": FORMAT, "backbone": info_json["backbone"]})
    readable_by_umask(temporary)
    temporary.replace(out / MODEL_FILE)
    (out / METADATA_FILE).write_text(json.dumps(info_json, indent=2) + "\n")
    write_history(out / HISTORY_FILE, step_history)


def metrics_of(result, per_class: bool = True) -> dict[str, Any]:
    return result.metrics() if hasattr(result, 'top1_match') else result.metrics(per_class=per_class)


def attach_eval(step_history: list[dict[str, Any]], step: int, metrics: dict[str, Any]) -> None:
    """Held-out results on the history row of the step after which they were measured."""
    if step_history and step_history[-1]["step"] == step:
        step_history[-1].update({"val_top1": metrics.get("top1"), "val_top5": metrics.get("top5"),
                                 "val_loss": metrics.get("loss"), "val_agreement": metrics.get("agreement_top1"),
                                 "val_kl": metrics.get("kl")})
