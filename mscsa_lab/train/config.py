"""What a training run is asked to do (``TrainConfig``), and the checks that turn bad requests into
messages a user can act on (``TrainingInputError``), before any model is built.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from mscsa_lab.errors import UserError

__all__ = ["TrainConfig", "TrainingInputError", "MODES", "AMP_MODES", "DEFAULT_LR", "SYNTHETIC", "backbone_input_size"]

MODES = ("mscsa-only", "finetune", "scratch", "distill")
AMP_MODES = ("none", "bf16", "fp16")
SYNTHETIC = "synthetic"
# AdamW learning rates that work for each mode at batch 32-256 (scaled by nothing: set lr to change).
DEFAULT_LR = {"mscsa-only": 1e-3, "finetune": 3e-4, "scratch": 1e-3, "distill": 1e-3}
# Distillation: the targets are the teacher's outputs on the very image the student sees, so any
# augmentation keeps them right; strong augmentation lets a few dozen photos give many views.
DISTILL_COLOR_JITTER = 0.4
DISTILL_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# A distillation epoch shows every image enough times for at least this many optimizer steps.
DISTILL_MIN_STEPS_PER_EPOCH = 25


class TrainingInputError(UserError, ValueError):
    """A training request that cannot run as given; the message says what to change."""


@dataclass
class TrainConfig:
    """One training run. Sizes are per process: the global batch of one optimizer step is
    ``batch_size * accum_steps * number of processes``.

    data: ``"synthetic"`` (the built-in shapes, offline) or a folder: either with ``train/`` and
        ``val/`` (or ``validation/``) sub-folders of class folders, or one folder of class folders,
        split into training and held-out images by ``val_fraction`` with ``seed``.
    profile / backbone: a Table 7 profile name, or any timm backbone (with ``mscsa`` settings);
        both: the profile's MSCSA settings on another backbone.
    mode: ``mscsa-only`` (backbone frozen and kept in eval mode, MSCSA + head train),
        ``finetune`` (everything trains), ``scratch`` (everything trains from random weights).
        ``distill`` (no labels needed): the backbone with its own trained classifier is the
        teacher (``pretrained`` or ``pretrained_file``, whole model), frozen; MSCSA and its head
        learn to reproduce the teacher's predictions (KL divergence at ``temperature``) on any
        folder of images (flat, or class folders whose names are ignored). The run's classes are
        the teacher's (``teacher_classes``: a JSON file of names; see ``mscsa_lab.train.teacher``).
        None: ``finetune`` with pretrained weights, else ``scratch``.
    img_size: None: the backbone's own input size (its timm test size, at least 224), the size its
        weights know and maps worth looking at (use 384 or 448 for finer maps).
    max_steps: stop after this many optimizer steps (the schedule spans them), whatever ``epochs``.
    augment / scale / ratio / hflip / color_jitter / auto_augment: timm's training transform
        (random-resized crop of ``scale`` of the area with aspect ratios in ``ratio``, horizontal
        flip with probability ``hflip``). scale None: ``default_crop_scale(img_size)`` for folders
        (timm's 0.08-1 at 224 px and above, a larger minimum for smaller images so small objects
        stay in the crop); flips only for the synthetic shapes. ratio None: 3/4-4/3.
        color_jitter / auto_augment None: 0.4 and RandAugment for distillation, none otherwise
        (``auto_augment="none"`` turns it off).
    repeat: times each training image is shown per epoch; None: 1, or for distillation enough
        for 25 steps per epoch (a few dozen photos then still give a useful run).
    amp: ``bf16`` / ``fp16`` autocast (fp16 with a GradScaler, CUDA only) or ``none`` (fp32).
    out: directory for ``model.safetensors``, ``model.json``, ``history.csv`` and the resumable
        ``last/`` state; None writes nothing (library use). A folder holding a finished run (or an
        unfinished run's ``last/``) is continued only with ``resume`` and replaced only with
        ``overwrite``; leftovers of a killed run are removed when a run starts there.
    scan_max_files / scan_max_s: a data folder's scan ends with a clear message past this many
        files and folders or seconds (a folder far larger than meant, a slow network disk).
    """

    data: str = SYNTHETIC
    profile: str | None = None
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    mscsa: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    pretrained: bool = False
    pretrained_file: str | None = None
    img_size: int | None = None
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    opt: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_steps: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    clip_grad: float | None = None
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_rate: float = 0.0
    backbone_drop_path: float = 0.0
    ema: bool = False
    ema_decay: float = 0.999
    augment: bool = True
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    hflip: float = 0.5
    color_jitter: float | None = None
    auto_augment: str | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    repeat: int | None = None
    temperature: float = 1.0
    teacher_classes: str | None = None
    val_fraction: float = 0.2
    synthetic_train: int = 2000
    synthetic_val: int = 500
    amp: str = "none"
    channels_last: bool | None = None
    device: str = "auto"
    sync_bn: bool | None = None
    workers: int | None = None
    seed: int = 0
    eval_every: int = 1
    log_every: int = 1
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    scan_max_files: int = 5_000_000
    scan_max_s: float = 600.0
    command: str | None = None

    # ------------------------------------------------------------------ derived
    @property
    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "finetune" if (self.pretrained or self.pretrained_file) else "scratch"

    @property
    def resolved_lr(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.resolved_mode]

    @property
    def resolved_color_jitter(self) -> float:
        if self.color_jitter is not None:
            return float(self.color_jitter)
        return DISTILL_COLOR_JITTER if self.resolved_mode == "distill" else 0.0

    @property
    def resolved_auto_augment(self) -> str | None:
        if self.auto_augment is not None:
            return None if str(self.auto_augment).strip().lower() in ("", "none") else self.auto_augment
        return DISTILL_AUTO_AUGMENT if self.resolved_mode == "distill" else None

    def with_resolved_size(self) -> "TrainConfig":
        """This config with ``img_size`` set (the backbone's own input size when None)."""
        if self.img_size is not None:
            return self
        return self.replace(img_size=backbone_input_size(self.backbone or _profile_backbone(self.profile)))

    @property
    def is_synthetic(self) -> bool:
        return str(self.data).strip().lower() == SYNTHETIC

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("scale", "ratio"):
            data[name] = list(data[name]) if data[name] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("scale", "ratio"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Raise ``TrainingInputError`` listing every problem; return self when the request is sound."""
        problems: list[str] = []

        def whole(name: str, low: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{_label(name)} must be a whole number >= {low}, got {value!r}")
            elif value < low:
                problems.append(f"{_label(name)} must be at least {low}, got {value}")

        def number(name: str, low: float, high: float, low_open: bool = False, high_open: bool = False,
                   allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{_label(name)} must be a number, got {value!r}")
                return
            too_low = value <= low if low_open else value < low
            too_high = value >= high if high_open else value > high
            if too_low or too_high:
                left, right = "(" if low_open else "[", ")" if high_open else "]"
                problems.append(f"{_label(name)}={value} is out of range: choose a value in {left}{low}, {high}{right}")

        if not isinstance(self.data, str) or not self.data.strip():
            problems.append("data must be 'synthetic' or the path of an image folder")
        if not (self.profile or self.backbone):
            problems.append("name a profile (e.g. resnet18) or a timm backbone (e.g. resnet10t) to train")
        if self.mode is not None and self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is unknown: choose one of {', '.join(MODES)}")
        if self.mode == "scratch" and (self.pretrained or self.pretrained_file):
            problems.append("mode 'scratch' starts from random weights: drop --pretrained/--pretrained-file, "
                            "or use mode 'finetune' or 'mscsa-only'")
        if self.pretrained_file is not None and not Path(self.pretrained_file).is_file():
            problems.append(f"pretrained file {str(self.pretrained_file)!r} does not exist")
        whole("img_size", 32, allow_none=True)
        if isinstance(self.img_size, int) and not isinstance(self.img_size, bool) and self.img_size > 4096:
            problems.append(f"image size {self.img_size} is too large: choose at most 4096 pixels")
        whole("epochs", 1)
        whole("max_steps", 1, allow_none=True)
        whole("batch_size", 1)
        whole("accum_steps", 1)
        whole("warmup_steps", 0)
        whole("repeat", 1, allow_none=True)
        whole("synthetic_train", 1)
        whole("synthetic_val", 0)
        whole("workers", 0, allow_none=True)
        whole("eval_every", 0)
        whole("log_every", 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a whole number >= 0, got {self.seed!r}")
        number("lr", 0.0, 10.0, low_open=True, allow_none=True)
        number("weight_decay", 0.0, 10.0)
        number("momentum", 0.0, 1.0, high_open=True)
        number("warmup_lr", 0.0, 10.0)
        number("min_lr", 0.0, 10.0)
        number("clip_grad", 0.0, 1e6, low_open=True, allow_none=True)
        number("smoothing", 0.0, 1.0, high_open=True)
        number("mixup", 0.0, 100.0)
        number("cutmix", 0.0, 100.0)
        number("drop_rate", 0.0, 1.0, high_open=True)
        number("backbone_drop_path", 0.0, 1.0, high_open=True)
        number("ema_decay", 0.0, 1.0, low_open=True, high_open=True)
        number("hflip", 0.0, 1.0)
        number("color_jitter", 0.0, 1.0, allow_none=True)
        number("temperature", 0.0, 100.0, low_open=True)
        number("crop_pct", 0.0, 1.0, low_open=True, allow_none=True)
        number("val_fraction", 0.0, 1.0, low_open=True, high_open=True)
        if self.scale is not None and not _pair(self.scale, 1.0):
            problems.append(f"scale must be two numbers 0 < low <= high <= 1 (the crop's share of the image), "
                            f"got {self.scale!r}")
        if self.ratio is not None and not _pair(self.ratio, 100.0):
            problems.append(f"ratio must be two numbers 0 < low <= high (the crop's aspect ratios), got {self.ratio!r}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp {self.amp!r} is unknown: choose one of {', '.join(AMP_MODES)}")
        if not isinstance(self.mscsa, dict):
            problems.append("mscsa settings must be a mapping of setting names to values")
        if not isinstance(self.backbone_kwargs, dict):
            problems.append("backbone_kwargs must be a mapping of timm keyword arguments")
        if (self.mixup or self.cutmix) and isinstance(self.batch_size, int) and self.batch_size % 2:
            problems.append(f"mixup/cutmix mixes pairs of images: use an even batch size, not {self.batch_size}")
        if self.resolved_mode == "distill" and not (self.pretrained or self.pretrained_file):
            problems.append("mode 'distill' explains a trained backbone: give its weights with --pretrained (timm's) or "
                            "--pretrained-file (a file of the whole model, classifier included)")
        if self.teacher_classes is not None and self.resolved_mode != "distill":
            problems.append("teacher classes name the classes of a distillation teacher: use them with mode 'distill'")
        if self.teacher_classes is not None and not Path(self.teacher_classes).is_file():
            problems.append(f"class names file {str(self.teacher_classes)!r} does not exist")
        if self.resume and not self.out:
            problems.append("resume needs the output directory of the run to continue (out)")
        if self.resume and self.overwrite:
            problems.append("resume continues the run in out, overwrite replaces it: choose one")
        whole("scan_max_files", 1)
        number("scan_max_s", 0.0, 1e7, low_open=True)
        if problems:
            raise TrainingInputError("cannot train: " + "; ".join(problems))
        return self


_LABELS = {"batch_size": "batch size", "img_size": "image size", "max_steps": "max steps",
           "accum_steps": "accum steps", "eval_every": "eval every", "log_every": "log every"}


def _pair(value: Any, high: float) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0 < value[0] <= value[1] <= high)


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _profile_backbone(profile: str | None) -> str | None:
    if not profile:
        return None
    from mscsa_lab.presets import ProfileError, load_profile

    try:
        return load_profile(profile).backbone
    except ProfileError:
        return None  # reported by the model build, with the list of profiles


def backbone_input_size(backbone: str | None, minimum: int = 224) -> int:
    """The side of the input the backbone's timm weights were evaluated at (``test_input_size``,
    else ``input_size``), at least ``minimum``: the default image size of a run."""
    import timm

    if not backbone or not timm.is_model(backbone):
        return minimum
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:  # noqa: BLE001 - timm raises several types for names without a config
        cfg = None
    size = (getattr(cfg, "test_input_size", None) or getattr(cfg, "input_size", None)) if cfg is not None else None
    return max(minimum, int(size[-1])) if size else minimum
