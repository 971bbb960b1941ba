"""The training loop, built from timm's parts: ``create_optimizer_v2``, ``create_scheduler_v2``
(stepped per optimizer update over the run's steps), timm's losses and ``Mixup``, ``ModelEmaV3``,
``AverageMeter``; PyTorch's DDP for several processes.

    from mscsa_lab.train import TrainConfig, train
    result = train(TrainConfig(data="synthetic", backbone="resnet10t", img_size=96, epochs=3, out="runs/a"))

One process or ``torchrun``: the same call. Global batch per optimizer step =
``batch_size x accum_steps x processes``. Gradient accumulation splits each loaded batch of
``batch_size x accum_steps`` images into ``accum_steps`` interleaved micro-batches, exactly the
split ``DistributedSampler`` gives that many processes: one process with ``accum_steps=N`` computes
the same gradients (BatchNorm batches included) as N processes with plain DDP.

BatchNorm across processes: on GPUs the model's BatchNorms are converted to ``SyncBatchNorm`` (one
set of batch statistics over the global batch). PyTorch's SyncBatchNorm is CUDA-only; on CPUs
(gloo) each process normalises with its own batch, as N accumulation steps would.
"""
from __future__ import annotations

import csv
import math
import random
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mscsa_lab.train.config import TrainConfig, TrainingInputError
from mscsa_lab.train.data import (
    ResumableSampler,
    build_transforms,
    check_batch_fits,
    data_config_for,
    default_crop_scale,
    default_workers,
    eval_loader,
    scan_data,
    split_micro_batches,
    steps_per_epoch,
    train_loader,
)
from mscsa_lab.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, gather_objects, setup
from mscsa_lab.train.evaluate import EvalResult, evaluate_model
from mscsa_lab.train.progress import Callback, ProgressEvent, StopFlag, should_stop
from mscsa_lab.train.state import (
    capture_rng,
    load_training_state,
    readable_by_umask,
    restore_rng,
    save_training_state,
)
from mscsa_lab.errors import UserError

__all__ = ["train", "TrainResult", "TrainingDivergedError", "MODEL_FILE", "METADATA_FILE", "HISTORY_FILE",
           "RESUME_FIELDS"]

MODEL_FILE = "model.safetensors"
METADATA_FILE = "model.json"
HISTORY_FILE = "history.csv"
FORMAT = "mscsa_lab.trained/1"
# Settings that must match to continue a run: they decide the model or which images it sees.
RESUME_FIELDS = ("data", "profile", "backbone", "backbone_kwargs", "mscsa", "mode", "pretrained", "pretrained_file",
                 "img_size", "seed", "val_fraction", "synthetic_train", "synthetic_val", "ema", "drop_rate")


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
    evaluation: EvalResult | None = None
    model_info: dict[str, Any] = field(default_factory=dict)  # what model.json holds


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _set_train_mode(net: nn.Module, frozen_backbone: bool) -> None:
    net.train()
    if frozen_backbone:
        _unwrap(net).backbone.eval()  # frozen: BatchNorm statistics stay the pretrained ones


def _emit(callbacks: list[Callback], info: DistInfo, event: ProgressEvent) -> None:
    if info.is_main:
        for callback in callbacks:
            callback(event)


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    changed = [f"{name}: was {saved.get(name)!r}, now {getattr(config, name)!r}"
               for name in RESUME_FIELDS if _normal(saved.get(name)) != _normal(getattr(config, name))]
    if changed:
        raise TrainingInputError("cannot resume: the run in this folder was started with other settings ("
                                 + "; ".join(changed) + "). Repeat the original settings, or use a new --out.")


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    from mscsa_lab.registry import create_mscsa_model

    backbone_kwargs = dict(config.backbone_kwargs)
    if config.backbone_drop_path:
        backbone_kwargs["drop_path_rate"] = config.backbone_drop_path
    return create_mscsa_model(
        config.profile, backbone=config.backbone, num_classes=num_classes, img_size=config.img_size,
        pretrained=bool(config.pretrained), pretrained_file=config.pretrained_file, drop_rate=config.drop_rate,
        backbone_kwargs=backbone_kwargs or None, **config.mscsa,
    )


def train(config: TrainConfig, callbacks: Iterable[Callback] = (), stop: StopFlag = None,
          model: nn.Module | None = None) -> TrainResult:
    """Train as ``config`` says; see ``TrainConfig``. ``callbacks`` get ``ProgressEvent``s (rank 0
    only); ``stop`` (a ``threading.Event`` or a callable) ends the run cleanly after the current
    optimizer step. ``model``: train this classifier instead of building one (benchmarks; mode
    ``mscsa-only`` then freezes its ``.backbone``); nothing is written for it (``out`` must be None).
    """
    config = config.validate()
    info = setup(config.device)
    try:
        return _train(config, list(callbacks), stop, model, info)
    finally:
        cleanup(info)


def _train(config: TrainConfig, callbacks: list[Callback], stop: StopFlag, model: nn.Module | None,
           info: DistInfo) -> TrainResult:
    started = time.perf_counter()
    notes: list[str] = []
    device = info.device
    mode = config.resolved_mode
    out = Path(config.out) if config.out else None
    custom_model = model is not None
    if custom_model and out is not None:
        raise TrainingInputError("a model passed to train() is not rebuilt from model.json: use out=None with it")
    if config.amp == "fp16" and device.type != "cuda":
        raise TrainingInputError("fp16 autocast needs a CUDA GPU; on the CPU use amp 'bf16' or 'none'")
    sync_bn = config.sync_bn if config.sync_bn is not None else (info.distributed and device.type == "cuda")
    if sync_bn and info.distributed and device.type != "cuda":
        raise TrainingInputError("SyncBatchNorm runs on CUDA GPUs only (PyTorch); leave sync_bn unset on CPUs")

    resume_state = None
    if config.resume:
        resume_state = load_training_state(out)
        _check_resumable(resume_state["config"], config)

    # ---------------------------------------------------------------- data (classes first)
    source = scan_data(config.data, synthetic_size=config.img_size, synthetic_train=config.synthetic_train,
                       synthetic_val=config.synthetic_val, val_fraction=config.val_fraction, seed=config.seed)
    check_batch_fits(len(source.train), info.world_size, config.batch_size, config.accum_steps)
    classes = source.classes

    # ---------------------------------------------------------------- model
    _seed_everything(config.seed)  # the same initial weights on every process
    if model is None:
        model = _build_model(config, len(classes))
    if mode == "mscsa-only":
        if not hasattr(model, "backbone"):
            raise TrainingInputError("mode 'mscsa-only' freezes the model's .backbone, and this model has none")
        model.backbone.requires_grad_(False)
        if not (config.pretrained or config.pretrained_file) and not custom_model:
            notes.append("mscsa-only without pretrained weights: the frozen backbone keeps its random initial weights")
    elif mode == "finetune" and not (config.pretrained or config.pretrained_file) and not custom_model:
        notes.append("finetune without pretrained weights trains everything from random weights (as 'scratch')")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingInputError("the model has no trainable parameters in this mode")
    backbone_name = model.backbone.name if hasattr(model.backbone, "name") else config.backbone
    crop_pct = config.crop_pct if config.crop_pct is not None else (1.0 if source.kind == "synthetic" else None)
    data_config = data_config_for(backbone_name, config.img_size, crop_pct, config.interpolation, model)
    scale, ratio = config.scale, config.ratio
    if source.kind == "synthetic":  # flips only, unless asked: a random crop can cut the shape out
        scale, ratio = scale or (1.0, 1.0), ratio or (1.0, 1.0)
    elif scale is None:
        scale = default_crop_scale(config.img_size)
    train_tf, eval_tf = build_transforms(data_config, config.augment, scale, config.hflip, config.color_jitter,
                                         config.auto_augment, ratio)
    source.attach_transforms(train_tf, eval_tf)

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    lr = config.resolved_lr
    optimizer = create_optimizer_v2(model, opt=config.opt, lr=lr, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema else None

    # ---------------------------------------------------------------- loaders and schedule
    workers = config.workers if config.workers is not None else default_workers(info.world_size, device.type)
    pin = device.type == "cuda"
    loader_batch = config.batch_size * config.accum_steps
    sampler = ResumableSampler(source.train, info.world_size, info.rank, config.seed)
    loader_rng = torch.Generator()
    loader = train_loader(source.train, loader_batch, sampler, workers, pin, loader_rng)
    val_loader = (eval_loader(source.val, max(config.batch_size, 32), info.rank, info.world_size, workers, pin)
                  if source.val is not None else None)
    per_epoch = steps_per_epoch(sampler, loader_batch)
    total_steps = per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    if config.warmup_steps >= total_steps:
        raise TrainingInputError(f"warmup steps ({config.warmup_steps}) must be fewer than the run's "
                                 f"{total_steps} optimizer steps")
    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=total_steps,
                                       warmup_epochs=config.warmup_steps, warmup_lr=config.warmup_lr,
                                       min_lr=config.min_lr, step_on_epochs=False, updates_per_epoch=1)

    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                      num_classes=len(classes))
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif config.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    # ---------------------------------------------------------------- resume
    global_step, start_epoch, skip = 0, 0, 0
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler") and resume_state.get("total_steps") == total_steps:
            scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None and "ema" in resume_state:
            ema.module.load_state_dict(resume_state["ema"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        global_step = int(resume_state["global_step"])
        start_epoch = int(resume_state["epoch"])
        history = list(resume_state.get("history", []))
        same_world = int(resume_state.get("world_size", 1)) == info.world_size
        skip = int(resume_state.get("samples_in_epoch", 0)) if same_world else 0
        if not same_world and resume_state.get("samples_in_epoch"):
            notes.append(f"resumed with {info.world_size} processes instead of {resume_state.get('world_size')}: "
                         f"epoch {start_epoch + 1} restarts from its beginning")
        rng_states = resume_state.get("rng", [])
        if same_world and info.rank < len(rng_states):
            restore_rng(rng_states[info.rank])
        else:
            _seed_everything(config.seed + info.rank + 1000 * start_epoch)
        if scheduler is not None:
            scheduler.step_update(num_updates=global_step)
        notes.append(f"resumed from {resume_state['path']} at epoch {start_epoch + 1}, step {global_step}")
    else:
        _seed_everything(config.seed + info.rank)  # augmentation / dropout differ per process

    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    frozen_backbone = mode == "mscsa-only"

    # ---------------------------------------------------------------- the loop
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    world = info.world_size
    steps_run = 0
    loop_start = time.perf_counter()
    train_time = 0.0
    images_run = 0
    status = "completed"
    last_eval: tuple[int, EvalResult] | None = None
    epoch = start_epoch
    lr_now = optimizer.param_groups[0]["lr"]

    start_message = (f"training {_describe(model, config, mode)} on {source.description}; {len(classes)} classes; "
                     f"{per_epoch} steps/epoch x {config.epochs} epochs"
                     + (f", max {config.max_steps} steps" if config.max_steps else "")
                     + f" = {total_steps} steps; global batch {loader_batch * world} ({world} process"
                     + ("es" if world > 1 else "") + f", {device.type}, amp {config.amp})"
                     + ("".join(f"\nnote: {n}" for n in notes)))
    _emit(callbacks, info, ProgressEvent("start", global_step, total_steps, epoch, config.epochs, lr=lr_now,
                                         message=start_message))

    def eval_now() -> EvalResult | None:
        if val_loader is None:
            return None
        target = ema.module if ema is not None else model
        return evaluate_model(target, val_loader, classes, device, info, amp_dtype, channels_last)

    def save_state(epoch_index: int, samples_in_epoch: int) -> None:
        rng = gather_objects(capture_rng(), info)
        if info.is_main and out is not None:
            save_training_state(out, model, ema.module if ema is not None else None, {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch_index, "samples_in_epoch": samples_in_epoch, "global_step": global_step,
                "total_steps": total_steps, "world_size": world, "rng": rng, "history": history,
                "config": config.to_dict(), "classes": classes,
            })
            _emit(callbacks, info, ProgressEvent("checkpoint", global_step, total_steps, epoch_index, config.epochs,
                                                 elapsed_s=time.perf_counter() - started,
                                                 message=f"saved the training state in {out / 'last'}"))
        barrier(info)

    while epoch < config.epochs and global_step < total_steps:
        sampler.set_epoch(epoch, skip)
        loader_rng.manual_seed(config.seed * 1_000_003 + epoch * 1009 + info.rank)
        position = skip
        skip = 0
        _set_train_mode(net, frozen_backbone)
        epoch_loss, epoch_acc = AverageMeter(), AverageMeter()
        interval = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        epoch_images = 0
        epoch_start = time.perf_counter()
        stopped = False
        for images, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            for j, (x, y) in enumerate(split_micro_batches(images, targets, config.accum_steps)):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                soft = None
                if mixup is not None:
                    x, soft = mixup(x, y)
                sync = net.no_sync() if (info.distributed and j < config.accum_steps - 1) else nullcontext()
                with sync:
                    with autocast():
                        logits = net(x)
                        loss = criterion(logits, soft if soft is not None else y)
                    scaled = loss / config.accum_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                with torch.no_grad():
                    interval[0] += loss.detach().double() * y.numel()
                    if soft is None:
                        interval[1] += (logits.detach().argmax(-1) == y).sum()
                    interval[2] += y.numel()
            if config.clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                dispatch_clip_grad(params, config.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            global_step += 1
            steps_run += 1
            position += loader_batch
            epoch_images += loader_batch * world
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)
            if ema is not None:
                ema.update(model, step=global_step)
            lr_now = optimizer.param_groups[0]["lr"]

            finished = global_step >= total_steps
            if global_step % config.log_every == 0 or finished:
                all_reduce_sum(interval, info)
                loss_sum, correct, count = interval.tolist()
                interval.zero_()
                step_loss = loss_sum / max(count, 1)
                step_acc = None if mixup is not None else 100.0 * correct / max(count, 1)
                if not math.isfinite(step_loss):
                    raise TrainingDivergedError(f"the training loss is {step_loss} at step {global_step}: lower the "
                                             f"learning rate ({lr}) or use amp 'none'")
                epoch_loss.update(step_loss, int(count))
                if step_acc is not None:
                    epoch_acc.update(step_acc, int(count))
                now = time.perf_counter()
                rate = epoch_images / max(now - epoch_start, 1e-9)
                pace = (now - loop_start) / steps_run
                _emit(callbacks, info, ProgressEvent(
                    "step", global_step, total_steps, epoch, config.epochs, loss=step_loss, accuracy=step_acc,
                    lr=lr_now, images_per_s=rate, eta_s=pace * (total_steps - global_step), elapsed_s=now - started))
            # checked after the step's callbacks, so a callback can stop the run at this very step
            flag = torch.tensor([1.0 if should_stop(stop) else 0.0], device=device)
            stopped = bool(all_reduce_sum(flag, info).item() > 0)
            if finished or stopped:
                break
        train_time += time.perf_counter() - epoch_start
        images_run += epoch_images
        epoch_complete = position + loader_batch > sampler.full_length
        if epoch_complete:
            metrics: dict[str, Any] = {}
            last_epoch = epoch + 1 >= config.epochs or global_step >= total_steps
            if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last_epoch):
                result = eval_now()
                if result is not None:
                    last_eval = (global_step, result)
                    metrics = result.metrics(per_class=False)
            row = {"epoch": epoch + 1, "step": global_step,
                   "train_loss": _r(epoch_loss.avg if epoch_loss.count else None),
                   "train_top1": _r(epoch_acc.avg if epoch_acc.count else None),
                   "val_top1": metrics.get("top1"), "val_top5": metrics.get("top5"), "val_loss": metrics.get("loss"),
                   "lr": lr_now, "images_per_s": _r(epoch_images / max(time.perf_counter() - epoch_start, 1e-9)),
                   "elapsed_s": _r(time.perf_counter() - started)}
            history.append(row)
            save_state(epoch + 1, 0)
            now = time.perf_counter()
            _emit(callbacks, info, ProgressEvent(
                "epoch", global_step, total_steps, epoch, config.epochs, loss=row["train_loss"],
                accuracy=row["train_top1"], lr=lr_now, images_per_s=row["images_per_s"],
                eta_s=(now - loop_start) / max(steps_run, 1) * (total_steps - global_step), elapsed_s=now - started,
                metrics=metrics))
            epoch += 1
            if not stopped:
                flag = torch.tensor([1.0 if should_stop(stop) else 0.0], device=device)
                stopped = bool(all_reduce_sum(flag, info).item() > 0)
        else:
            save_state(epoch, position)
        if stopped and global_step < total_steps:
            status = "stopped"
            break
    if status == "completed" and config.max_steps is not None and global_step >= config.max_steps \
            and global_step < per_epoch * config.epochs:
        status = "max_steps"

    # ---------------------------------------------------------------- final evaluation and files
    final_model = ema.module if ema is not None else model
    evaluation = last_eval[1] if last_eval is not None and last_eval[0] == global_step else eval_now()
    metrics = evaluation.metrics() if evaluation is not None else {}
    wall = time.perf_counter() - started
    rate = images_run / train_time if train_time > 0 else 0.0
    epochs_done = round(global_step / per_epoch, 4)
    model_info: dict[str, Any] = {}
    if not custom_model:
        model_info = _model_info(final_model, config, mode, classes, data_config, metrics, source, info, status,
                                 global_step, total_steps, epochs_done, wall, rate, sync_bn)
    if info.is_main and out is not None:
        _write_outputs(out, final_model, model_info, history)
    barrier(info)
    final_model.eval()
    message = f"{status}: {global_step}/{total_steps} steps ({epochs_done:g} epochs) in {wall:.1f} s, {rate:.1f} img/s"
    if metrics.get("top1") is not None:
        message += f"; held-out top-1 {metrics['top1']:.2f}%"
    if out is not None and info.is_main:
        message += f"; wrote {out / MODEL_FILE} and {out / METADATA_FILE}"
    _emit(callbacks, info, ProgressEvent("end", global_step, total_steps, max(epoch - 1, 0), config.epochs,
                                         lr=lr_now, images_per_s=rate, elapsed_s=wall, metrics=metrics,
                                         message=message))
    return TrainResult(final_model, classes, status, global_step, total_steps, epochs_done, metrics, history, wall,
                       rate, data_config, out, notes, evaluation, model_info)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _describe(model: nn.Module, config: TrainConfig, mode: str) -> str:
    name = config.profile or (model.backbone.name if hasattr(model, "backbone") and hasattr(model.backbone, "name")
                              else type(model).__name__)
    count = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{name} (+MSCSA, {mode}; {trainable / 1e6:.2f} M of {count / 1e6:.2f} M parameters train)"


def _model_info(model: nn.Module, config: TrainConfig, mode: str, classes: list[str], data_config: dict[str, Any],
                metrics: dict[str, Any], source, info: DistInfo, status: str, steps: int, total_steps: int,
                epochs_done: float, wall: float, rate: float, sync_bn: bool) -> dict[str, Any]:
    """Everything ``load_trained`` needs to rebuild the model, and how it was made."""
    from mscsa_lab.io.metadata import run_metadata

    backbone_kwargs = dict(config.backbone_kwargs)
    if config.backbone_drop_path:
        backbone_kwargs["drop_path_rate"] = config.backbone_drop_path
    _, height, width = data_config["input_size"]
    command = config.command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    return {
        "format": FORMAT,
        "weights": MODEL_FILE,
        "weights_kind": "ema" if config.ema else "model",
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
        "metrics": metrics,
        "training": {
            "mode": mode, "status": status, "steps": steps, "total_steps": total_steps, "epochs": config.epochs,
            "epochs_done": epochs_done, "max_steps": config.max_steps, "batch_size": config.batch_size,
            "accum_steps": config.accum_steps, "world_size": info.world_size,
            "global_batch": config.batch_size * config.accum_steps * info.world_size, "lr": config.resolved_lr,
            "opt": config.opt, "weight_decay": config.weight_decay, "sched": config.sched,
            "warmup_steps": config.warmup_steps, "smoothing": config.smoothing, "mixup": config.mixup,
            "cutmix": config.cutmix, "ema": config.ema, "amp": config.amp, "sync_bn": bool(sync_bn),
            "seed": config.seed, "val_fraction": config.val_fraction, "pretrained": config.pretrained,
            "pretrained_file": config.pretrained_file, "data": source.to_dict(), "wall_s": round(wall, 2),
            "images_per_s": round(rate, 2), "config": config.to_dict(),
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "metadata": run_metadata(device_type=info.device.type),
        "command": command,
    }


def _write_outputs(out: Path, model: nn.Module, model_info: dict[str, Any], history: list[dict[str, Any]]) -> None:
    import json

    from mscsa_lab.io.checkpoints import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{MODEL_FILE}.tmp"
    save_checkpoint(model, temporary, metadata={"format": FORMAT, "backbone": model_info["backbone"]})
    readable_by_umask(temporary)
    temporary.replace(out / MODEL_FILE)
    (out / METADATA_FILE).write_text(json.dumps(model_info, indent=2) + "\n")
    with open(out / HISTORY_FILE, "w", newline="") as handle:
        columns = ["epoch", "step", "train_loss", "train_top1", "val_top1", "val_top5", "val_loss", "lr",
                   "images_per_s", "elapsed_s"]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k) for k in columns})
