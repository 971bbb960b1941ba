"""The runs folder (what the Train tab writes and the Saliency tab loads) and the one job slot that a
training run or an ablation study holds while it uses the whole CPU or GPU."""
from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mscsa_lab.models.config import ConfigError

__all__ = ["RUN_NAME", "run_folder", "run_summary", "run_label", "trained_runs", "Job", "JobSlot"]

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def run_folder(runs_dir: Path, value: str) -> Path:
    """A run folder named by the page (a run name or a path under the runs folder); anything that points
    elsewhere is refused, so a request cannot make the server load arbitrary files."""
    candidate = Path(str(value))
    candidate = (candidate if candidate.is_absolute() else runs_dir / candidate).resolve()
    if candidate.parent != runs_dir or not (candidate / "model.json").is_file():
        raise ConfigError(f"no trained run {Path(str(value)).name[:200]!r} in {runs_dir}: train one in the Train tab")
    return candidate


def run_summary(folder: Path) -> dict[str, Any]:
    """What a run's model.json says about it, for labels and notes ({} when it cannot be read)."""
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def run_label(folder: Path, meta: dict[str, Any] | None = None) -> str:
    meta = run_summary(folder) if meta is None else meta
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    top1 = metrics.get("top1")
    accuracy = f", {top1:.1f}% val top-1" if isinstance(top1, (int, float)) else ""
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else []
    return f"trained run {folder.name} ({str(meta.get('backbone', '?'))[:64]}, {len(classes)} classes{accuracy})"


def trained_runs(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, run name) of every finished run in the runs folder, newest first."""
    if not runs_dir.is_dir():
        return []
    folders = [f for f in runs_dir.iterdir() if (f / "model.json").is_file() and (f / "model.safetensors").is_file()]
    folders.sort(key=lambda f: (f / "model.json").stat().st_mtime, reverse=True)
    return [(run_label(f), f.name) for f in folders]


@dataclass
class Job:
    name: str
    stop: threading.Event = field(default_factory=threading.Event)
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None


class JobSlot:
    """One job at a time (a training run or an ablation study: both use the whole CPU or GPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Job | None = None

    def claim(self, name: str) -> Job:
        job = Job(name)
        with self._lock:
            current = self._current
            if current is not None and current.thread is not None and current.thread.is_alive():
                raise ConfigError(f"{current.name} is still running: wait for it or stop it first")
            self._current = job
        return job

    def release(self, job: Job) -> None:
        if job.thread is not None and job.thread.is_alive():  # the page went away or cancelled: stop cleanly
            job.stop.set()
            job.thread.join(timeout=60)
        with self._lock:
            if self._current is job:
                self._current = None

    def stop(self) -> str:
        """Ask the running job to stop after its current step; its last checkpoint stays."""
        with self._lock:
            job = self._current
        if job is None or job.thread is None or not job.thread.is_alive():
            return "No training is running."
        job.stop.set()
        return f"Stopping {job.name} after the current step; its weights so far are kept."
