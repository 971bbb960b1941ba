"""Progress reporting and stopping, for the command line (tqdm) and the app (gr.Progress, curves).

The engine calls every callback on rank 0 with one ``ProgressEvent`` per event: ``phase`` (what the
run does next, in ``message``: scanning the data, loading the teacher, building the model,
evaluating, writing its files), ``start``, ``step`` (every ``log_every`` optimizer steps), ``epoch``
(after each epoch's evaluation), ``checkpoint`` (the resumable state was written) and ``end``. A callback is either a plain function taking the
event or an object with ``__call__`` (e.g. ``TqdmProgress``). Exceptions in a callback stop the run.

Stopping: pass ``stop=threading.Event()`` (or any callable returning True to stop) to ``train``;
it is checked while the data folder is scanned, between phases, after every optimizer step and
before every held-out batch. Once training has begun the run ends cleanly: the weights so far are
written, with the resumable state at that step; before that it raises ``Cancelled``.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mscsa_lab.stopping import StopFlag, should_stop

__all__ = ["ProgressEvent", "Callback", "StopFlag", "should_stop", "TqdmProgress", "PrintProgress"]


@dataclass
class ProgressEvent:
    """What happened. Counts are global (all processes): ``images_per_s`` is the whole run's."""

    kind: str  # "phase" | "start" | "step" | "epoch" | "checkpoint" | "end"
    step: int  # optimizer steps done (including those before a resume)
    total_steps: int
    epoch: int  # the current epoch, 0-based (for "epoch": the one just finished)
    epochs: int
    loss: float | None = None  # training loss: mean over the last log interval ("step") or the epoch
    accuracy: float | None = None  # training top-1 (%) over the same span (None with mixup); distill: agreement
    lr: float | None = None
    images_per_s: float | None = None  # training throughput over the current epoch so far
    eta_s: float | None = None  # seconds to the end of the run at the current pace
    elapsed_s: float = 0.0  # seconds since this run (or resumed run) started
    metrics: dict[str, Any] = field(default_factory=dict)  # "epoch"/"end": held-out top1/top5/loss...
    message: str = ""

    @property
    def fraction(self) -> float:
        """Share of the run done, 0..1 (for progress bars)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Callback = Callable[[ProgressEvent], None]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _epoch_line(event: ProgressEvent) -> str:
    parts = [f"epoch {event.epoch + 1}/{event.epochs}", f"step {event.step}/{event.total_steps}"]
    if event.loss is not None:
        parts.append(f"train loss {event.loss:.4f}")
    if event.accuracy is not None:
        parts.append(f"train acc {event.accuracy:.1f}%")
    labels = {"top1": "val top-1", "top5": "val top-5", "agreement_top1": "agreement with the teacher",
              "loss": "val loss"}
    for key, label in labels.items():
        if key in event.metrics and event.metrics[key] is not None:
            value = event.metrics[key]
            parts.append(f"{label} {value:.2f}%" if key != "loss" else f"{label} {value:.4f}")
    if event.images_per_s:
        parts.append(f"{event.images_per_s:.1f} img/s")
    return ", ".join(parts)


class PrintProgress:
    """One line per epoch (and at start/end) on a stream: for logs and non-interactive runs."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "epoch":
            print(_epoch_line(event), file=self.stream, flush=True)
        elif event.kind == "phase" and event.total_steps == 0 and event.message != "training":
            print(f"{event.message}...", file=self.stream, flush=True)
        elif event.kind in ("start", "end") and event.message:
            print(event.message, file=self.stream, flush=True)


class TqdmProgress:
    """A tqdm bar over the run's optimizer steps (loss, accuracy, images/s, ETA), one line per epoch."""

    def __init__(self, stream=None, disable: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.disable = disable
        self.bar = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if event.kind == "phase" and self.bar is None and event.total_steps == 0 and event.message != "training":
            tqdm.write(f"{event.message}...", file=self.stream)
        elif event.kind == "start":
            if event.message:
                tqdm.write(event.message, file=self.stream)
            self.bar = tqdm(total=event.total_steps, initial=event.step, unit="step", file=self.stream,
                            disable=self.disable, dynamic_ncols=True, desc="train")
        elif event.kind == "step" and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            postfix = {}
            if event.loss is not None:
                postfix["loss"] = f"{event.loss:.3f}"
            if event.accuracy is not None:
                postfix["acc"] = f"{event.accuracy:.1f}%"
            if event.images_per_s:
                postfix["img/s"] = f"{event.images_per_s:.1f}"
            postfix["eta"] = _fmt_time(event.eta_s)
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.set_description(f"epoch {event.epoch + 1}/{event.epochs}", refresh=True)
        elif event.kind == "epoch":
            tqdm.write(_epoch_line(event), file=self.stream)
        elif event.kind == "end":
            if self.bar is not None:
                self.bar.update(event.step - self.bar.n)
                self.bar.close()
                self.bar = None
            if event.message:
                tqdm.write(event.message, file=self.stream)
