"""What a training run writes: ``model.safetensors``, ``model.json`` (everything ``load_trained``
needs to rebuild the model, and how it was made) and ``history.csv`` (one row per logged step).
"""
from __future__ import annotations

import csv
import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from dataclasses import dataclass, field

from torch import nn

from mscsa_lab.errors import UserError

from mscsa_lab.train.config import TrainConfig
from mscsa_lab.train.distributed import DistInfo
from mscsa_lab.train.state import readable_by_umask

__all__ = ["TrainResult", "TrainingDivergedError", "MODEL_FILE", "METADATA_FILE", "HISTORY_FILE", "FORMAT", "HISTORY_COLUMNS", "model_info", "token_grid",
           "write_outputs", "write_history", "history_text", "metrics_of", "attach_eval"]

MODEL_FILE = "model.safetensors"
METADATA_FILE = "model.json"
HISTORY_FILE = "history.csv"
FORMAT = "mscsa_lab.trained/1"
# One row per logged optimizer step; the held-out columns are filled on the rows after which an
# evaluation ran (the end of an epoch, the end of the run). Distillation runs fill val_agreement
# (top-1 agreement with the teacher, %) and val_kl instead of val_top1/val_top5.
HISTORY_COLUMNS = ["step", "epoch", "train_loss", "train_top1", "lr", "images_per_s", "elapsed_s", "val_top1",
                   "val_top5", "val_loss", "val_agreement", "val_kl"]


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message suggests what to change."""


@dataclass
class TrainResult:
    model: nn.Module  # the trained model (EMA weights with ema=True), eval mode, on the training device
    classes: list[str]
    status: str  # "completed", "stopped" (stop flag) or "max_steps"
    steps: int  # optimizer steps done in total (before a resume included)
    total_steps: int
    epochs_done: float
    metrics: dict[str, Any]  # final held-out metrics (empty without held-out images)
    history: list[dict[str, Any]]  # one row per finished epoch
    wall_s: float  # this call's wall time
    images_per_s: float  # training images per second in this call (all processes)
    data_config: dict[str, Any]
    out_dir: Path | None
    notes: list[str] = field(default_factory=list)
    evaluation: Any = None
    model_info: dict[str, Any] = field(default_factory=dict)  # what model.json holds
    step_history: list[dict[str, Any]] = field(default_factory=list)  # one row per logged step (history.csv)
    agreement: Any = None  # distillation: held-out agreement with the teacher


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


def history_text(rows: list[dict[str, Any]]) -> str:
    """The step history as CSV text (``HISTORY_COLUMNS``; a missing value is an empty field)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    return buffer.getvalue()


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """``history.csv`` in ``path``'s folder, written aside and renamed (never through a link)."""
    from mscsa_lab.train.writing import write_text_file

    write_text_file(path.parent, path.name, history_text(rows))


def write_outputs(out: Path, model: nn.Module, info_json: dict[str, Any], step_history: list[dict[str, Any]]) -> None:
    """The weights, ``model.json`` and ``history.csv``, each written under a temporary name and renamed
    into place; a full or read-only disk raises ``RunFolderError`` naming the file and the space needed."""
    from mscsa_lab.io.checkpoints import save_checkpoint
    from mscsa_lab.train.writing import tensor_bytes, write_file_with, write_text_file

    def weights(path: Path) -> None:
        save_checkpoint(model, path, metadata={"format": FORMAT, "backbone": info_json["backbone"]})
        readable_by_umask(path)

    write_file_with(out, MODEL_FILE, weights, needed=tensor_bytes(model.state_dict()))
    write_text_file(out, HISTORY_FILE, history_text(step_history))
    write_text_file(out, METADATA_FILE, json.dumps(info_json, indent=2) + "\n")  # last: it marks a finished run


def metrics_of(result, per_class: bool = True) -> dict[str, Any]:
    return result.metrics() if hasattr(result, 'top1_match') else result.metrics(per_class=per_class)


def attach_eval(step_history: list[dict[str, Any]], step: int, metrics: dict[str, Any]) -> None:
    """Held-out results on the history row of the step after which they were measured."""
    if step_history and step_history[-1]["step"] == step:
        step_history[-1].update({"val_top1": metrics.get("top1"), "val_top5": metrics.get("top5"),
                                 "val_loss": metrics.get("loss"), "val_agreement": metrics.get("agreement_top1"),
                                 "val_kl": metrics.get("kl")})
