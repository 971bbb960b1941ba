"""The runs folder (what the Train tab writes and the Saliency tab loads) and the one job slot that a
training run or an ablation study holds while it uses the whole CPU or GPU."""
from __future__ import annotations

import logging
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
    """A run folder named by the page (a run's name); anything that resolves elsewhere (a path, a symlink
    out of the runs folder) is refused, so a request cannot make the server load arbitrary files."""
    from mscsa_lab.io.guarded import resolve_inside, shown_name

    name = Path(str(value)).name
    if not name or name != str(value).strip().rstrip("/").split("/")[-1] or name in (".", ".."):
        raise ConfigError(f"no trained run {shown_name(value)} in {runs_dir}: train one in the Train tab")
    folder = resolve_inside(runs_dir / name, runs_dir, what="trained run", error=ConfigError)
    if folder.parent != runs_dir.resolve() or not (folder / "model.json").is_file():
        raise ConfigError(f"no trained run {shown_name(name)} in {runs_dir}: train one in the Train tab")
    return folder


def run_summary(folder: Path) -> dict[str, Any]:
    """A run's ``model.json``, checked field by field ({} when it is missing or malformed: the run is skipped
    with a warning in the log, never the app's start)."""
    from mscsa_lab.errors import UserError
    from mscsa_lab.io.run_metadata import read_run_metadata

    try:
        return read_run_metadata(folder)
    except UserError as error:
        _warn_once(folder, str(error))
        return {}


_WARNED: dict[tuple[str, float], str] = {}


def _warn_once(folder: Path, message: str) -> None:
    try:
        stamp = (folder / "model.json").stat().st_mtime
    except OSError:
        stamp = 0.0
    key = (str(folder), stamp)
    if key not in _WARNED and len(_WARNED) < 10_000:
        _WARNED[key] = message
        logging.getLogger("mscsa_lab.app").warning("skipped the run %s: %s", folder.name[:200], message)


def run_label(folder: Path, meta: dict[str, Any] | None = None) -> str:
    meta = run_summary(folder) if meta is None else meta
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    top1 = metrics.get("top1")
    accuracy = f", {top1:.1f}% val top-1" if isinstance(top1, (int, float)) else ""
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else []
    return f"trained run {folder.name[:64]} ({str(meta.get('backbone', '?'))[:64]}, {len(classes)} classes{accuracy})"


def trained_runs(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, run name) of every finished run in the runs folder whose files are sound, newest first; a run
    whose ``model.json`` is malformed is left out (and logged once)."""
    if not runs_dir.is_dir():
        return []
    found = []
    for folder in runs_dir.iterdir():
        try:
            if folder.is_symlink() or not (folder / "model.json").is_file() or \
                    not (folder / "model.safetensors").is_file():
                continue
            stamp = (folder / "model.json").stat().st_mtime
        except OSError:
            continue
        meta = run_summary(folder)
        if meta:
            found.append((stamp, run_label(folder, meta), folder.name))
    return [(label, name) for _, label, name in sorted(found, reverse=True)]


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
