"""Distillation from a backbone's own classifier into MSCSA and its head: the loss, the teacher's
outputs (from the student's frozen backbone maps when they are the teacher's), and agreement with
the teacher on held-out images as the run's metric.

The student's backbone is the teacher's trunk with the same weights, frozen, in eval mode. When
the teacher's head applied to the student's last stage map reproduces the teacher's own output
(checked once on real images: true for ResNets, ConvNeXts and most CNNs; not where timm's
``forward_features`` adds layers after the last stage, e.g. EfficientNet's head conv), the teacher
costs only its head; otherwise it runs whole on the same images.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mscsa_lab.train.distributed import DistInfo, all_reduce_sum

__all__ = ["distillation_loss", "TeacherOutputs", "AgreementResult", "evaluate_agreement", "evaluate_distilled"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al.,
    2015: keeps gradient sizes comparable across temperatures), averaged over the batch."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


class TeacherOutputs:
    """The teacher's logits for the images the student just saw. With ``shared`` the student's
    last backbone stage map (caught by a forward hook) goes through the teacher's head; otherwise
    the teacher runs on the images."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.teacher = teacher
        self.student = student
        self.shared = False
        self._last_map: torch.Tensor | None = None
        self._hook = student.backbone.register_forward_hook(self._catch)

    def _catch(self, module: nn.Module, inputs: Any, output: list[torch.Tensor]) -> None:
        self._last_map = output[-1]

    @torch.no_grad()
    def check_shared(self, images: torch.Tensor, atol: float = 1e-4) -> bool:
        """Whether the teacher's head on the student's last stage map gives the teacher's output
        for ``images`` (eval mode); decides ``shared``."""
        was_training = self.student.training
        self.student.eval()
        try:
            stage_map = self.student.backbone(images)[-1]
            whole = self.teacher(images)
            head_only = self.teacher.forward_head(stage_map)
            self.shared = head_only.shape == whole.shape and torch.allclose(head_only, whole, atol=atol, rtol=1e-3)
        except Exception:  # noqa: BLE001 - a head that cannot take the map: run the whole teacher
            self.shared = False
        finally:
            self.student.train(was_training)
        return self.shared

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.shared and self._last_map is not None:
            logits = self.teacher.forward_head(self._last_map)
        else:
            logits = self.teacher(images)
        self._last_map = None
        return logits

    def close(self) -> None:
        self._hook.remove()


@dataclass
class AgreementResult:
    """How closely the student reproduces the teacher on held-out images."""

    images: int
    top1_match: int  # the student's top class is the teacher's
    top5_match: int  # the teacher's top class is among the student's five (or fewer) best
    kl_sum: float  # KL(teacher || student) at temperature 1, summed over images
    teacher_confidence_sum: float  # the teacher's probability of its own top class, summed

    def metrics(self) -> dict[str, Any]:
        n = max(self.images, 1)
        value = lambda x: round(float(x), 4) if self.images else None  # noqa: E731
        return {"agreement_top1": value(100.0 * self.top1_match / n), "agreement_top5": value(100.0 * self.top5_match / n),
                "kl": value(self.kl_sum / n), "loss": value(self.kl_sum / n),
                "teacher_confidence": value(100.0 * self.teacher_confidence_sum / n), "images": self.images}


@torch.no_grad()
def evaluate_agreement(model: nn.Module, teacher_outputs: TeacherOutputs, loader, device: torch.device,
                       info: DistInfo | None = None, amp_dtype: torch.dtype | None = None,
                       channels_last: bool = False, stop=None) -> AgreementResult:
    """Agreement of ``model`` with the teacher on this process's ``loader`` (summed over processes
    with ``info``). ``model`` is put in eval mode and restored after. ``stop``: checked before every
    batch (``mscsa_lab.stopping.Cancelled`` ends the evaluation)."""
    from mscsa_lab.stopping import Cancelled, should_stop
    from mscsa_lab.train.data import batches

    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    try:
        for images, _ in batches(loader):
            if should_stop(stop):
                raise Cancelled("the held-out evaluation was stopped")
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                student = model(images)
                teacher = teacher_outputs(images)
            student, teacher = student.float(), teacher.float()
            target = teacher.argmax(-1)
            k = min(5, student.shape[-1])
            sums[0] += images.shape[0]
            sums[1] += (student.argmax(-1) == target).sum()
            sums[2] += (student.topk(k, dim=-1).indices == target[:, None]).any(-1).sum()
            sums[3] += distillation_loss(student, teacher, 1.0).double() * images.shape[0]
            sums[4] += teacher.softmax(-1).max(-1).values.double().sum()
    finally:
        model.train(was_training)
    if info is not None:
        all_reduce_sum(sums, info)
    images, top1, top5, kl, confidence = sums.tolist()
    return AgreementResult(int(round(images)), int(round(top1)), int(round(top5)), kl, confidence)


def evaluate_distilled(model_dir, data: str, split: str = "all", batch_size: int = 32,
                       device: str = "auto") -> AgreementResult:
    """Agreement of a distilled run (``model_dir``) with its teacher on the images of ``data``
    (any folder; ``split``: ``all`` its images, ``val`` the run's held-out split of it), the
    teacher rebuilt from ``model.json`` (its weights file, or timm's weights)."""
    from pathlib import Path

    from mscsa_lab.io.checkpoints import load_trained
    from mscsa_lab.train.config import TrainingInputError
    from mscsa_lab.train.data import build_transforms, eval_loader, scan_images
    from mscsa_lab.train.distributed import resolve_device
    from mscsa_lab.train.teacher import load_teacher

    model, meta = load_trained(model_dir)
    teacher_meta = meta.get("teacher")
    if meta.get("mode") != "distill" or not teacher_meta:
        raise TrainingInputError(f"{str(model_dir)!r} was not distilled from a teacher: evaluate it on labelled images")
    if split not in ("all", "val"):
        raise TrainingInputError(f"split {split!r} is unknown: choose all or val")
    weights = teacher_meta["weights"]
    from_file = weights != "pretrained (timm)"
    if from_file and not Path(weights).is_file():
        raise TrainingInputError(f"the teacher's weights file {weights!r} (from model.json) is gone: put it back")
    teacher = load_teacher(teacher_meta["backbone"], pretrained=not from_file,
                           pretrained_file=weights if from_file else None, backbone_kwargs=meta.get("backbone_kwargs"))
    training = meta.get("training", {})
    source = scan_images(data, val_fraction=float(training.get("val_fraction", 0.2)) if split == "val" else 1e-9,
                         seed=int(training.get("seed", 0)), synthetic_size=int(meta["input_size"][0]))
    pre = meta["preprocessing"]
    height, width = meta["input_size"]
    data_config = {"input_size": (3, height, width), "interpolation": pre["interpolation"], "mean": tuple(pre["mean"]),
                   "std": tuple(pre["std"]), "crop_pct": pre["crop_pct"], "crop_mode": pre.get("crop_mode", "center")}
    _, eval_transform = build_transforms(data_config, augment=False)
    source.attach_transforms(eval_transform, eval_transform)
    dataset = source.val if split == "val" else torch.utils.data.ConcatDataset(
        [d for d in (source.train, source.val) if d is not None])
    if dataset is None or len(dataset) == 0:
        raise TrainingInputError(f"{data!r} has no held-out images: use split 'all'")
    torch_device = resolve_device(device)
    model.to(torch_device)
    teacher.model.to(torch_device)
    outputs = TeacherOutputs(teacher.model, model)
    try:
        return evaluate_agreement(model, outputs, eval_loader(dataset, batch_size, 0, 1, 0), torch_device)
    finally:
        outputs.close()
