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
(gloo) each process normalises with its own batch, as N accumulation steps would, and the running
statistics are averaged over processes before every evaluation and save, so the accuracy a run
reports is that of the file it writes.

Mode ``distill`` (``mscsa_lab.train.distill``): the loss is the KL divergence to the teacher's
predictions on the same augmented images; labels are never read.

Stopping reaches every phase: the flag is checked while the data folder is scanned, between the
phases (``phase`` events name them), after every optimizer step and before every held-out batch.
Stopped before the first step, the run raises ``mscsa_lab.stopping.Cancelled`` (nothing trained);
after it, the run ends "stopped" with its weights and resumable state written (the held-out
evaluation skipped).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mscsa_lab.train.config import TrainConfig, TrainingInputError
from mscsa_lab.train.data import (ResumableSampler, batches, build_transforms, data_config_for, default_workers,
                                  eval_loader, split_micro_batches, steps_per_epoch, train_loader)
from mscsa_lab.train.distill import AgreementResult, distillation_loss, evaluate_agreement
from mscsa_lab.train.distributed import (DistInfo, all_reduce_sum, average_batchnorm_stats, barrier, cleanup,
                                         gather_objects, setup)
from mscsa_lab.train.evaluate import EvalResult, evaluate_model
from mscsa_lab.train.parts import (RESUME_FIELDS, attach_teacher, augmentation_settings, build_criterion, build_model,
                                   check_resumable, freeze_for_mode, prepare_data, raw_images, seed_everything,
                                   start_message, teacher_for)
from mscsa_lab.train.outputs import (HISTORY_FILE, METADATA_FILE, MODEL_FILE, TrainingDivergedError, TrainResult,
                                     attach_eval, metrics_of, model_info, token_grid, write_history, write_outputs)
from mscsa_lab.train.progress import Callback, ProgressEvent, StopFlag, should_stop
from mscsa_lab.train.resume import restore_state
from mscsa_lab.train.state import capture_rng, load_training_state, save_training_state
from mscsa_lab.train.writing import prepare_run_folder
from mscsa_lab.stopping import Cancelled

__all__ = ["train", "TrainResult", "TrainingDivergedError", "MODEL_FILE", "METADATA_FILE", "HISTORY_FILE",
           "RESUME_FIELDS"]


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


def train(config: TrainConfig, callbacks: Iterable[Callback] = (), stop: StopFlag = None,
          model: nn.Module | None = None) -> TrainResult:
    """Train as ``config`` says; see ``TrainConfig``. ``callbacks`` get ``ProgressEvent``s (rank 0
    only); ``stop`` (a ``threading.Event`` or a callable) ends the run cleanly after the current
    optimizer step. ``model``: train this classifier instead of building one (benchmarks; mode
    ``mscsa-only`` then freezes its ``.backbone``); nothing is written for it (``out`` must be None).
    """
    config = config.validate().with_resolved_size()
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
    custom_model = model is not None

    def phase(message: str) -> None:
        """Say what the run does next; stopped before training, it ends here (nothing written)."""
        if should_stop(stop):
            raise Cancelled(f"stopped before {message}: nothing was trained")
        _emit(callbacks, info, ProgressEvent("phase", 0, 0, 0, config.epochs, elapsed_s=time.perf_counter() - started,
                                             message=message))

    if custom_model and config.out:
        raise TrainingInputError("a model passed to train() is not rebuilt from model.json: use out=None with it")
    if custom_model and mode == "distill":
        raise TrainingInputError("mode 'distill' builds its student from the teacher: pass no model to train()")
    if config.amp == "fp16" and device.type != "cuda":
        raise TrainingInputError("fp16 autocast needs a CUDA GPU; on the CPU use amp 'bf16' or 'none'")
    sync_bn = config.sync_bn if config.sync_bn is not None else (info.distributed and device.type == "cuda")
    if sync_bn and info.distributed and device.type != "cuda":
        raise TrainingInputError("SyncBatchNorm runs on CUDA GPUs only (PyTorch); leave sync_bn unset on CPUs")

    out = None
    if config.out:  # resolved once; every file of the run is written inside it
        out = prepare_run_folder(config.out, config.resume, config.overwrite, notes) if info.is_main else \
            Path(config.out).resolve()
        barrier(info)
    resume_state = None
    if config.resume:
        resume_state = load_training_state(out)
        check_resumable(resume_state["config"], config)

    # ---------------------------------------------------------------- data and classes (the teacher's in distill)
    phase(f"scanning the data ({config.data})")
    source = prepare_data(config, mode, info, notes, stop)
    teacher = teacher_info = None
    if mode == "distill":
        phase(f"loading the teacher ({config.backbone or config.profile})")
        teacher_name, teacher = teacher_for(config)
        classes = teacher.classes
        notes.extend(teacher.notes)
        teacher_info = teacher.describe(teacher_name)
    else:
        classes = source.classes

    # ---------------------------------------------------------------- model
    phase("building the model")
    seed_everything(config.seed)  # the same initial weights on every process
    if model is None:
        model = build_model(config, len(classes))
    frozen_backbone = freeze_for_mode(model, config, mode, custom_model, notes)
    backbone_name = model.backbone.name if hasattr(model.backbone, "name") else config.backbone
    crop_pct = config.crop_pct if config.crop_pct is not None else (1.0 if source.kind == "synthetic" else None)
    data_config = data_config_for(backbone_name, config.img_size, crop_pct, config.interpolation, model)
    augmentation = augmentation_settings(config, source)
    train_tf, eval_tf = build_transforms(data_config, config.augment, augmentation["scale"], config.hflip,
                                         augmentation["color_jitter"], augmentation["auto_augment"],
                                         augmentation["ratio"])
    source.attach_transforms(train_tf, eval_tf)
    tokens = token_grid(model, config.img_size, config.img_size) if not custom_model else None

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    teacher_outputs = None
    if teacher is not None:
        teacher_outputs = attach_teacher(teacher, model, raw_images(source, 4, eval_tf), device, channels_last,
                                         teacher_info, notes)

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

    mixup, criterion = build_criterion(config, len(classes))

    # ---------------------------------------------------------------- resume
    global_step, start_epoch, skip = 0, 0, 0
    history: list[dict[str, Any]] = []
    step_history: list[dict[str, Any]] = []
    if resume_state is not None:
        global_step, start_epoch, skip, history, step_history = restore_state(
            resume_state, model, optimizer, scheduler, ema, scaler, info, config, total_steps, sampler.full_length,
            classes, notes)
    else:
        seed_everything(config.seed + info.rank)  # augmentation / dropout differ per process

    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------------- the loop
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    world = info.world_size
    steps_run = 0
    loop_start = time.perf_counter()
    train_time = 0.0
    images_run = 0
    status = "completed"
    last_eval: tuple[int, Any] | None = None
    epoch = start_epoch
    lr_now = optimizer.param_groups[0]["lr"]

    phase("training")
    _emit(callbacks, info, ProgressEvent("start", global_step, total_steps, epoch, config.epochs, lr=lr_now,
                                         message=start_message(model, config, mode, source, classes, teacher_info,
                                                               per_epoch, total_steps, loader_batch, world, device,
                                                               notes)))

    def eval_now():
        """Held-out evaluation (BatchNorm statistics averaged over processes first); None when there
        are no held-out images or a stop ended it (one process only: several must finish together)."""
        if val_loader is None:
            return None
        target = ema.module if ema is not None else model
        average_batchnorm_stats(target, info)
        halt = stop if world == 1 else None
        _emit(callbacks, info, ProgressEvent("phase", global_step, total_steps, epoch, config.epochs,
                                             message=f"evaluating on {source.val_count} held-out images"))
        try:
            if teacher_outputs is not None:
                return evaluate_agreement(target, teacher_outputs, val_loader, device, info, amp_dtype, channels_last,
                                          halt)
            return evaluate_model(target, val_loader, classes, device, info, amp_dtype, channels_last, halt)
        except Cancelled:
            notes.append(f"the held-out evaluation after step {global_step} was stopped: no held-out metrics")
            return None

    def save_state(epoch_index: int, samples_in_epoch: int) -> None:
        average_batchnorm_stats(model, info)
        if ema is not None:
            average_batchnorm_stats(ema.module, info)
        rng = gather_objects(capture_rng(), info)
        if info.is_main and out is not None:
            save_training_state(out, model, ema.module if ema is not None else None, {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch_index, "samples_in_epoch": samples_in_epoch, "global_step": global_step,
                "total_steps": total_steps, "world_size": world, "rng": rng, "history": history,
                "config": config.to_dict(), "classes": classes,
            }, step_history)
            write_history(out / HISTORY_FILE, step_history)  # the curves so far, readable while the run goes on
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
        last_in_epoch = min(total_steps, global_step + (sampler.full_length - position) // loader_batch)
        for images, targets in batches(loader):
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
                        if teacher_outputs is not None:
                            taught = teacher_outputs(x)
                            loss = distillation_loss(logits, taught, config.temperature)
                            y = taught.argmax(-1)  # "accuracy" of a distillation step: agreement
                        else:
                            loss = criterion(logits, soft if soft is not None else y)
                    scaled = loss / config.accum_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                with torch.no_grad():
                    interval[0] += loss.detach().double() * y.numel()
                    if soft is None or teacher_outputs is not None:
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
            if global_step % config.log_every == 0 or finished or global_step == last_in_epoch:
                all_reduce_sum(interval, info)
                loss_sum, correct, count = interval.tolist()
                interval.zero_()
                step_loss = loss_sum / max(count, 1)
                step_acc = None if (mixup is not None and teacher_outputs is None) else 100.0 * correct / max(count, 1)
                if not math.isfinite(step_loss):
                    raise TrainingDivergedError(f"the training loss is {step_loss} at step {global_step}: lower the "
                                                f"learning rate ({lr}) or use amp 'none'")
                epoch_loss.update(step_loss, int(count))
                if step_acc is not None:
                    epoch_acc.update(step_acc, int(count))
                now = time.perf_counter()
                rate = epoch_images / max(now - epoch_start, 1e-9)
                pace = (now - loop_start) / steps_run
                step_history.append({"step": global_step, "epoch": epoch + 1, "train_loss": _r(step_loss),
                                     "train_top1": _r(step_acc), "lr": lr_now, "images_per_s": _r(rate),
                                     "elapsed_s": _r(now - started)})
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
                    metrics = metrics_of(result, per_class=False)
                    attach_eval(step_history, global_step, metrics)
            row = {"epoch": epoch + 1, "step": global_step,
                   "train_loss": _r(epoch_loss.avg if epoch_loss.count else None),
                   "train_top1": _r(epoch_acc.avg if epoch_acc.count else None),
                   "val_top1": metrics.get("top1"), "val_top5": metrics.get("top5"), "val_loss": metrics.get("loss"),
                   "val_agreement": metrics.get("agreement_top1"), "val_kl": metrics.get("kl"),
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
    if evaluation is not None and (last_eval is None or last_eval[0] != global_step):
        attach_eval(step_history, global_step, metrics_of(evaluation, per_class=False))
    average_batchnorm_stats(final_model, info)
    metrics = metrics_of(evaluation) if evaluation is not None else {}
    wall = time.perf_counter() - started
    rate = images_run / train_time if train_time > 0 else 0.0
    epochs_done = round(global_step / per_epoch, 4)
    info_json: dict[str, Any] = {}
    if not custom_model:
        info_json = model_info(final_model, config, mode, classes, data_config, metrics, source, info, status,
                               global_step, total_steps, epochs_done, wall, rate, sync_bn, augmentation, teacher_info)
        info_json["tokens"] = tokens
    if info.is_main and out is not None:
        _emit(callbacks, info, ProgressEvent("phase", global_step, total_steps, epoch, config.epochs,
                                             message=f"writing the run's files in {out}"))
        write_outputs(out, final_model, info_json, step_history)
    barrier(info)
    if teacher_outputs is not None:
        teacher_outputs.close()
    final_model.eval()
    message = f"{status}: {global_step}/{total_steps} steps ({epochs_done:g} epochs) in {wall:.1f} s, {rate:.1f} img/s"
    if metrics.get("top1") is not None:
        message += f"; held-out top-1 {metrics['top1']:.2f}%"
    elif evaluation is None and val_loader is not None:
        message += "; held-out evaluation skipped (stopped)"
    if metrics.get("agreement_top1") is not None:
        message += f"; held-out agreement with the teacher {metrics['agreement_top1']:.2f}% (KL {metrics['kl']:.4f})"
    if out is not None and info.is_main:
        message += f"; wrote {out / MODEL_FILE} and {out / METADATA_FILE}"
    _emit(callbacks, info, ProgressEvent("end", global_step, total_steps, max(epoch - 1, 0), config.epochs,
                                         lr=lr_now, images_per_s=rate, elapsed_s=wall, metrics=metrics,
                                         message=message))
    return TrainResult(final_model, classes, status, global_step, total_steps, epochs_done, metrics, history, wall,
                       rate, data_config, out, notes, evaluation if isinstance(evaluation, EvalResult) else None,
                       info_json, step_history, evaluation if isinstance(evaluation, AgreementResult) else None)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
