"""The parts of a training run the engine assembles: data (labelled, or any images for
distillation), the teacher, the model and its frozen parts, the augmentation settings, the loss,
and the checks that a resumed run is the same run.
"""
from __future__ import annotations

import math
import random
from typing import Any

from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
import numpy as np
import torch
from torch import nn

from mscsa_lab.train.config import DISTILL_MIN_STEPS_PER_EPOCH, TrainConfig, TrainingInputError
from mscsa_lab.train.data import check_batch_fits, default_crop_scale, repeat_dataset, scan_data, scan_images
from mscsa_lab.train.distill import TeacherOutputs
from mscsa_lab.train.distributed import DistInfo

__all__ = ["RESUME_FIELDS", "check_resumable", "teacher_for", "build_model", "prepare_data", "augmentation_settings",
           "raw_images", "freeze_for_mode", "attach_teacher", "seed_everything", "build_criterion", "describe_model",
           "start_message"]

# Settings that must match to continue a run: they decide the model or which images it sees.
RESUME_FIELDS = ("data", "profile", "backbone", "backbone_kwargs", "mscsa", "mode", "pretrained", "pretrained_file",
                 "img_size", "seed", "val_fraction", "synthetic_train", "synthetic_val", "ema", "drop_rate", "repeat",
                 "teacher_classes")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    changed = [f"{name}: was {saved.get(name)!r}, now {getattr(config, name)!r}"
               for name in RESUME_FIELDS if _normal(saved.get(name)) != _normal(getattr(config, name))]
    if changed:
        raise TrainingInputError("cannot resume: the run in this folder was started with other settings ("
                                 + "; ".join(changed) + "). Repeat the original settings, or use a new --out.")


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value

def teacher_for(config: TrainConfig):
    from mscsa_lab.presets import load_profile
    from mscsa_lab.train.teacher import load_teacher

    backbone = config.backbone or load_profile(config.profile).backbone
    return backbone, load_teacher(backbone, config.pretrained, config.pretrained_file, config.teacher_classes,
                                  config.img_size, config.backbone_kwargs)

def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    from mscsa_lab.registry import create_mscsa_model

    backbone_kwargs = dict(config.backbone_kwargs)
    if config.backbone_drop_path:
        backbone_kwargs["drop_path_rate"] = config.backbone_drop_path
    return create_mscsa_model(
        config.profile, backbone=config.backbone, num_classes=num_classes, img_size=config.img_size,
        pretrained=bool(config.pretrained), pretrained_file=config.pretrained_file, drop_rate=config.drop_rate,
        backbone_kwargs=backbone_kwargs or None, **config.mscsa,
    )

def prepare_data(config: TrainConfig, mode: str, info: DistInfo, notes: list[str], stop=None):
    """The run's images (labelled, or any images for distillation), repeated for small folders. The
    folder scan is bounded (``config.scan_max_files``, ``config.scan_max_s``) and ends at ``stop``."""
    common = dict(synthetic_size=config.img_size, synthetic_train=config.synthetic_train,
                  synthetic_val=config.synthetic_val, val_fraction=config.val_fraction, seed=config.seed, stop=stop,
                  max_files=config.scan_max_files, max_seconds=config.scan_max_s)
    source = scan_images(config.data, **common) if mode == "distill" else scan_data(config.data, **common)
    notes.extend(source.notes)
    global_batch = config.batch_size * config.accum_steps * info.world_size
    times = config.repeat
    if times is None:
        times = max(1, math.ceil(DISTILL_MIN_STEPS_PER_EPOCH * global_batch / source.train_count)) \
            if mode == "distill" else 1
    if times > 1:
        source.train = repeat_dataset(source.train, times)
        notes.append(f"each of the {source.train_count} training images is shown {times} times per epoch "
                     f"(differently augmented)")
    check_batch_fits(len(source.train), info.world_size, config.batch_size, config.accum_steps)
    return source


def augmentation_settings(config: TrainConfig, source) -> dict[str, Any]:
    """The training transform's settings, with the defaults resolved (recorded in model.json)."""
    scale, ratio = config.scale, config.ratio
    if source.kind == "synthetic" and config.resolved_mode != "distill":
        # flips only, unless asked: a random crop can cut the shape out
        scale, ratio = scale or (1.0, 1.0), ratio or (1.0, 1.0)
    scale = tuple(scale) if scale is not None else default_crop_scale(config.img_size)
    ratio = tuple(ratio) if ratio is not None else (3 / 4, 4 / 3)
    return {"augment": bool(config.augment), "scale": list(scale), "ratio": [round(r, 4) for r in ratio],
            "hflip": config.hflip, "color_jitter": config.resolved_color_jitter,
            "auto_augment": config.resolved_auto_augment}

def raw_image(source, index: int):
    """Training image ``index`` before any transform (for the teacher's probe)."""
    dataset = source._train_base
    saved, dataset.transform = dataset.transform, None
    try:
        return dataset[index % len(dataset)][0]
    finally:
        dataset.transform = saved

def freeze_for_mode(model: nn.Module, config: TrainConfig, mode: str, custom_model: bool, notes: list[str]) -> bool:
    """Freeze the backbone for ``mscsa-only`` and ``distill`` (returns whether it is frozen); note
    modes that train from random weights without saying so."""
    frozen_backbone = mode in ("mscsa-only", "distill")
    if frozen_backbone:
        if not hasattr(model, "backbone"):
            raise TrainingInputError(f"mode {mode!r} freezes the model's .backbone, and this model has none")
        model.backbone.requires_grad_(False)
        if mode == "mscsa-only" and not (config.pretrained or config.pretrained_file) and not custom_model:
            notes.append("mscsa-only without pretrained weights: the frozen backbone keeps its random initial weights")
    elif mode == "finetune" and not (config.pretrained or config.pretrained_file) and not custom_model:
        notes.append("finetune without pretrained weights trains everything from random weights (as 'scratch')")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingInputError("the model has no trainable parameters in this mode")
    return frozen_backbone

def build_criterion(config: TrainConfig, num_classes: int):
    """(timm's Mixup or None, the loss for labelled runs): soft-target cross-entropy with
    mixup/cutmix, label-smoothing cross-entropy, or plain cross-entropy."""
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                      num_classes=max(num_classes, 1))
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif config.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    return mixup, criterion

def describe_model(model: nn.Module, config: TrainConfig, mode: str) -> str:
    name = config.profile or (model.backbone.name if hasattr(model, "backbone") and hasattr(model.backbone, "name")
                              else type(model).__name__)
    count = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{name} (+MSCSA, {mode}; {trainable / 1e6:.2f} M of {count / 1e6:.2f} M parameters train)"


def raw_images(source, count: int, transform) -> torch.Tensor:
    """The first ``count`` training images through ``transform`` (the evaluation one), as a batch."""
    return torch.stack([transform(raw_image(source, i)) for i in range(min(count, source.train_count))])


def attach_teacher(teacher, model: nn.Module, probe: torch.Tensor, device: torch.device, channels_last: bool,
                   teacher_info: dict[str, Any], notes: list[str]) -> TeacherOutputs:
    """The teacher on the device, hooked to the student; whether they share the backbone's pass is
    decided on ``probe`` images and recorded in ``teacher_info``."""
    teacher.model.to(device)
    if channels_last:
        teacher.model.to(memory_format=torch.channels_last)
    outputs = TeacherOutputs(teacher.model, model)
    if not outputs.check_shared(probe.to(device)):
        notes.append("the teacher's head cannot reuse the student's backbone maps: the teacher runs whole")
    teacher_info["shared_backbone_pass"] = outputs.shared
    return outputs


def start_message(model: nn.Module, config: TrainConfig, mode: str, source, classes: list[str],
                  teacher_info: dict[str, Any] | None, per_epoch: int, total_steps: int, loader_batch: int,
                  world: int, device: torch.device, notes: list[str]) -> str:
    """The line a run starts with: what trains on what, for how long, and the run's notes."""
    return (f"training {describe_model(model, config, mode)} on {source.description}; {len(classes)} classes"
            + (f" (the teacher's, {teacher_info['classes_source']})" if teacher_info else "")
            + f"; {per_epoch} steps/epoch x {config.epochs} epochs"
            + (f", max {config.max_steps} steps" if config.max_steps else "")
            + f" = {total_steps} steps; global batch {loader_batch * world} ({world} process"
            + ("es" if world > 1 else "") + f", {device.type}, amp {config.amp})"
            + "".join(f"\nnote: {n}" for n in notes))
