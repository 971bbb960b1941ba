"""Held-out evaluation: top-1/top-5, loss, per-class accuracy and the confusion matrix, summed
exactly over processes; files (metrics JSON, per-class CSV, confusion CSV + PNG) for a trained
model directory.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from timm.utils import accuracy
from torch import nn

from mscsa_lab.train.distributed import DistInfo, all_reduce_sum

__all__ = ["EvalResult", "evaluate_model", "plot_confusion", "write_evaluation", "evaluate_trained"]


@dataclass
class EvalResult:
    classes: list[str]
    confusion: np.ndarray  # [true, predicted] image counts
    top5_correct: int
    loss_sum: float
    topk: int  # the "top-5" k: min(5, number of classes)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return 100.0 * float(np.trace(self.confusion)) / self.count if self.count else float("nan")

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / self.count if self.count else float("nan")

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    def per_class(self) -> pd.DataFrame:
        """One row per class: images, correct, accuracy (%), and how often it was predicted."""
        images = self.confusion.sum(axis=1)
        correct = np.diag(self.confusion)
        predicted = self.confusion.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy_pct = np.where(images > 0, 100.0 * correct / np.maximum(images, 1), np.nan)
            precision = np.where(predicted > 0, 100.0 * correct / np.maximum(predicted, 1), np.nan)
        return pd.DataFrame({"class": self.classes, "images": images.astype(int), "correct": correct.astype(int),
                             "accuracy (%)": accuracy_pct, "predicted": predicted.astype(int),
                             "precision (%)": precision})

    def confusion_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.confusion.astype(int), index=self.classes, columns=self.classes)
        frame.index.name = "true \\ predicted"
        return frame

    def metrics(self, per_class: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"top1": _round(self.top1), f"top{self.topk}": _round(self.top5),
                                "top5": _round(self.top5), "loss": _round(self.loss), "images": self.count}
        if per_class:
            frame = self.per_class()
            data["per_class_accuracy"] = {row["class"]: _round(row["accuracy (%)"]) for _, row in frame.iterrows()}
        return data


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, classes: list[str], device: torch.device,
                   info: DistInfo | None = None, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False, stop=None) -> EvalResult:
    """Evaluate ``model`` (put in eval mode, restored after) on this process's ``loader``; with
    ``info`` for several processes the counts are summed over all of them. ``stop`` (a stop flag)
    is checked before every batch: ``mscsa_lab.stopping.Cancelled`` ends the evaluation."""
    from mscsa_lab.stopping import Cancelled, should_stop
    from mscsa_lab.train.data import batches

    was_training = model.training
    model.eval()
    num_classes = len(classes)
    topk = min(5, num_classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, top-k correct
    criterion = nn.CrossEntropyLoss(reduction="sum")
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    try:
        for images, targets in batches(loader):
            if should_stop(stop):
                raise Cancelled("the held-out evaluation was stopped")
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(images)
            logits = logits.float()
            sums[0] += criterion(logits, targets)
            _, top_k = accuracy(logits, targets, topk=(1, topk))
            sums[1] += torch.round(top_k * targets.numel() / 100.0).to(torch.float64)
            predicted = logits.argmax(dim=-1)
            confusion += torch.bincount(targets * num_classes + predicted, minlength=num_classes ** 2).to(torch.float64)
    finally:
        model.train(was_training)
    if info is not None:
        all_reduce_sum(confusion, info)
        all_reduce_sum(sums, info)
    matrix = confusion.view(num_classes, num_classes).round().long().cpu().numpy()
    return EvalResult(list(classes), matrix, int(round(float(sums[1]))), float(sums[0]), topk)


def plot_confusion(result: EvalResult, title: str = "", normalise: bool = True) -> Figure:
    """The confusion matrix as a heat map (rows: true class, columns: predicted), counts written
    in the cells; a plain ``Figure`` (no pyplot state)."""
    from mscsa_lab.io.figures import new_figure

    matrix = result.confusion.astype(float)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalise else matrix
    n = len(result.classes)
    side = max(4.0, 0.55 * n + 2.5)
    figure, axis = new_figure(figsize=(side + 1.0, side))
    image = axis.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04,
                    label="share of the true class" if normalise else "images")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                axis.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                          color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black")
    axis.set_xticks(range(n), result.classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(n), result.classes, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title or f"Confusion matrix: top-1 {result.top1:.1f}% on {result.count} images")
    figure.tight_layout()
    return figure


def write_evaluation(result: EvalResult, out_dir: str | Path, extra: dict[str, Any] | None = None,
                     title: str = "") -> dict[str, Path]:
    """``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` in ``out_dir``."""
    from mscsa_lab.io.figures import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "per_class": out / "per_class.csv",
             "confusion": out / "confusion.csv", "confusion_png": out / "confusion.png"}
    metrics = {**result.metrics(), **(extra or {})}
    paths["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    result.per_class().to_csv(paths["per_class"], index=False)
    result.confusion_frame().to_csv(paths["confusion"])
    save_figure(plot_confusion(result, title), paths["confusion_png"])
    return paths


def evaluate_trained(model_dir: str | Path, data: str, out_dir: str | Path | None = None, split: str = "val",
                     batch_size: int = 64, device: str = "auto", workers: int | None = 0,
                     synthetic_count: int | None = None) -> tuple[EvalResult, dict[str, Path]]:
    """Evaluate the model in ``model_dir`` (``model.safetensors`` + ``model.json``) on ``data`` with
    its own preprocessing, and write the files to ``out_dir`` (default ``model_dir/eval``).

    ``split``: ``val`` (the held-out images: ``val/`` beside ``train/``, the same seeded split of a
    single folder as in training, or the synthetic held-out set), ``train``, or ``all``.
    """
    from mscsa_lab.io.checkpoints import load_trained
    from mscsa_lab.io.metadata import run_metadata
    from mscsa_lab.train.config import TrainingInputError
    from mscsa_lab.train.data import build_transforms, eval_loader, scan_data
    from mscsa_lab.train.distributed import resolve_device

    if split not in ("val", "train", "all"):
        raise TrainingInputError(f"split {split!r} is unknown: choose val, train or all")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TrainingInputError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    model, meta = load_trained(model_dir)
    if meta.get("mode") == "distill":
        raise TrainingInputError(f"{str(model_dir)!r} was distilled from a teacher, without labels: its measure is "
                                 f"agreement with the teacher (model.json 'metrics'); to measure it on other images "
                                 f"use mscsa_lab.train.distill.evaluate_distilled")
    training = meta.get("training", {})
    classes = list(meta["classes"])
    height, width = meta["input_size"]
    if height != width:
        raise TrainingInputError(f"the model was trained at {height}x{width}; evaluation supports square inputs")
    if str(data).strip().lower() == "synthetic":
        from mscsa_lab.data.synthetic import CLASSES

        if classes != list(CLASSES):
            raise TrainingInputError(f"the model knows the classes {', '.join(classes)}, not the synthetic shapes "
                                     f"({', '.join(CLASSES)}): evaluate it on an image folder of its classes")
    data_info = training.get("data", {})
    seed = int(training.get("seed", 0))
    count = synthetic_count if synthetic_count is not None else int(data_info.get("val_images") or 500)
    source = scan_data(data, synthetic_size=height, synthetic_train=max(1, count), synthetic_val=count,
                       val_fraction=float(training.get("val_fraction", 0.2)), seed=seed,
                       split="all" if split == "all" else "train", classes=classes)
    pre = meta["preprocessing"]
    data_config = {"input_size": (3, height, width), "interpolation": pre["interpolation"], "mean": tuple(pre["mean"]),
                   "std": tuple(pre["std"]), "crop_pct": pre["crop_pct"], "crop_mode": pre.get("crop_mode", "center")}
    _, eval_transform = build_transforms(data_config, augment=False)
    source.attach_transforms(eval_transform, eval_transform)
    dataset = source.train if split == "train" else source.val
    if split == "all" and source.kind == "folders" and source.val is not None:
        dataset = torch.utils.data.ConcatDataset([source.train, source.val])
    if dataset is None or len(dataset) == 0:
        raise TrainingInputError(f"{data!r} has no held-out images to evaluate on: use split 'train' or 'all', or "
                                 f"add a val/ folder")
    torch_device = resolve_device(device)
    model.to(torch_device)
    loader = eval_loader(dataset, batch_size, 0, 1, workers or 0, pin_memory=torch_device.type == "cuda")
    result = evaluate_model(model, loader, classes, torch_device)
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / "eval"
    extra = {"model_dir": str(model_dir), "data": str(data), "split": split,
             "metadata": run_metadata(device_type=torch_device.type)}
    paths = write_evaluation(result, out, extra, title=f"{Path(model_dir).name} on {data} ({split})")
    return result, paths
