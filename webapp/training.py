"""The Train tab's jobs: one training run at a time in a background thread, its progress streamed
to the page, a Stop that ends it cleanly (the last checkpoint stays), and the runs it leaves on disk.

Runs live in one folder (``--runs-dir``, the ``MSCSA_LAB_RUNS`` variable, default ``./runs``);
each is a ``mscsa_lab.train`` output folder (``model.safetensors`` + ``model.json``), so the same
run loads in the Saliency tab, with ``python -m mscsa_lab evaluate`` and with
``mscsa_lab.io.checkpoints.load_trained``.
"""
from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mscsa_lab.io.figures import plot_training_curves
from mscsa_lab.models.config import ConfigError

__all__ = ["runs_dir", "set_runs_dir", "trained_runs", "run_folder", "run_summary", "train_job", "ablation_job",
           "stop_training"]

_RUNS_DIR = Path(os.environ.get("MSCSA_LAB_RUNS") or "runs").resolve()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FIGURE_INTERVAL_S = 1.0  # redraw the curves at most this often


def runs_dir() -> Path:
    return _RUNS_DIR


def set_runs_dir(path: str | os.PathLike) -> Path:
    """Where runs are written and found (the app's ``--runs-dir``)."""
    global _RUNS_DIR
    _RUNS_DIR = Path(path).expanduser().resolve()
    return _RUNS_DIR


def run_folder(value: str) -> Path:
    """A run folder named by the page (a run name or a path under the runs folder); anything that
    points elsewhere is refused, so a request cannot make the server load arbitrary files."""
    candidate = Path(str(value))
    candidate = (candidate if candidate.is_absolute() else runs_dir() / candidate).resolve()
    if candidate.parent != runs_dir() or not (candidate / "model.json").is_file():
        raise ConfigError(f"no trained run {Path(str(value)).name!r} in {runs_dir()}: train one in the Train tab")
    return candidate


def run_summary(folder: Path) -> dict[str, Any]:
    """What a run's model.json says about it, for labels and notes."""
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def run_label(folder: Path, meta: dict[str, Any] | None = None) -> str:
    meta = run_summary(folder) if meta is None else meta
    top1 = (meta.get("metrics") or {}).get("top1")
    accuracy = f", {top1:.1f}% val top-1" if isinstance(top1, (int, float)) else ""
    classes = len(meta.get("classes") or [])
    return f"trained run {folder.name} ({meta.get('backbone', '?')}, {classes} classes{accuracy})"


def trained_runs() -> list[tuple[str, str]]:
    """(label, run name) of every finished run in the runs folder, newest first."""
    if not runs_dir().is_dir():
        return []
    folders = [f for f in runs_dir().iterdir() if (f / "model.json").is_file() and (f / "model.safetensors").is_file()]
    folders.sort(key=lambda f: (f / "model.json").stat().st_mtime, reverse=True)
    return [(run_label(f), f.name) for f in folders]


@dataclass
class _Job:
    name: str
    stop: threading.Event = field(default_factory=threading.Event)
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None


_lock = threading.Lock()
_current: _Job | None = None


def _claim(name: str) -> _Job:
    """The one job slot (a training run or an ablation study): both use the CPU or GPU fully."""
    global _current
    job = _Job(name)
    with _lock:
        if _current is not None and _current.thread is not None and _current.thread.is_alive():
            raise ConfigError(f"{_current.name} is still running: wait for it or stop it first")
        _current = job
    return job


def _release(job: _Job) -> None:
    global _current
    if job.thread is not None and job.thread.is_alive():  # the page went away or cancelled: stop cleanly
        job.stop.set()
        job.thread.join(timeout=60)
    with _lock:
        if _current is job:
            _current = None


def stop_training() -> str:
    """Ask the running job to stop after its current step; its last checkpoint stays."""
    with _lock:
        job = _current
    if job is None or job.thread is None or not job.thread.is_alive():
        return "No training is running."
    job.stop.set()
    return f"Stopping {job.name} after the current step; its weights so far are kept."


def _status(name: str, event: dict[str, Any] | None) -> str:
    if event is None:
        return f"**{name}**: preparing data and model..."
    parts = [f"**{name}**: step {event['step']}/{event['total_steps']}",
             f"epoch {event['epoch'] + 1}/{event['epochs']}"]
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.3f}")
    if event.get("accuracy") is not None:
        parts.append(f"train acc {event['accuracy']:.1f}%")
    top1 = (event.get("metrics") or {}).get("top1")
    if top1 is not None:
        parts.append(f"val top-1 {top1:.1f}%")
    if event.get("images_per_s"):
        parts.append(f"{event['images_per_s']:.1f} img/s")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {int(event['eta_s'])} s")
    return ", ".join(parts)


DISK_HEADROOM_BYTES = 512 * 2**20


def _check_disk(config: Any) -> None:
    """Refuse a run the runs folder's disk cannot hold: the weights are written three times (the model,
    the resumable state, the state being replaced) plus the optimizer state, with some headroom."""
    import shutil

    from mscsa_lab.analysis.cost import ResourceError, estimate_cost
    from mscsa_lab.io.numbers import human_bytes

    estimate = estimate_cost(config.profile, config.backbone, "classification", (config.img_size, config.img_size))
    needed = 5 * estimate.param_bytes + DISK_HEADROOM_BYTES
    folder = runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ResourceError(f"training {estimate.label} writes about {human_bytes(needed)} of checkpoints, but the "
                            f"runs folder {folder} has {human_bytes(free)} free: free some space or use --runs-dir")


def train_job(config_fields: dict[str, Any], name: str | None = None,
              max_minutes: float | None = None) -> Iterator[tuple[str, Any, str | None]]:
    """Run one training job; yields (status text, curves figure or None, run name once finished).

    ``config_fields`` are ``mscsa_lab.train.TrainConfig`` fields (``out`` is set here, inside the
    runs folder). Closing the generator (the page cancelled or went away) stops the run cleanly, and so
    does reaching ``max_minutes`` (the server's training time limit). A run whose checkpoints the disk
    cannot hold is refused before it starts.
    """
    from mscsa_lab.train import TrainConfig, train

    name = (name or "").strip() or time.strftime("run-%Y%m%d-%H%M%S")
    if not _NAME.match(name):
        raise ConfigError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 64), starting with a "
                          "letter or digit")
    out = runs_dir() / name
    if out.exists() and any(out.iterdir()) and not config_fields.get("resume"):
        raise ConfigError(f"a run named {name!r} exists in {runs_dir()}: tick 'Resume' to continue it from its last "
                          "checkpoint (after a stop or a server restart), or choose another name")
    config = TrainConfig(**{**config_fields, "out": str(out), "command": f"app Train tab: {name}"}).validate()
    _check_disk(config)
    job = _claim(name)
    timer = threading.Timer(max_minutes * 60.0, job.stop.set) if max_minutes else None
    if timer is not None:  # the run stops cleanly at the time limit, its checkpoint kept
        timer.daemon = True
        timer.start()

    def run() -> None:
        try:
            job.result = train(config, callbacks=[lambda event: job.events.put(event.to_dict())], stop=job.stop)
        except BaseException as error:  # noqa: BLE001 - handed to the page below
            job.error = error
        finally:
            job.events.put(None)

    job.thread = threading.Thread(target=run, name=f"mscsa-train-{name}", daemon=True)
    points: list[dict[str, Any]] = []
    last_drawn = 0.0
    try:
        # Gradio holds (and can close, on a cancel) the generator only from its first yield: start after it.
        yield _status(name, None), None, None
        job.thread.start()
        while True:
            item = job.events.get()
            if item is None:
                break
            points.append(item)
            now = time.monotonic()
            if now - last_drawn >= FIGURE_INTERVAL_S or item["kind"] in ("epoch", "end"):
                last_drawn = now
                yield _status(name, item), plot_training_curves(points, name), None
            else:
                yield _status(name, item), None, None
        job.thread.join()
        if job.error is not None:
            raise job.error
        result = job.result
        top1 = result.metrics.get("top1")
        accuracy = f"{top1:.1f}% val top-1" if top1 is not None else "no held-out images"
        verdict = {"completed": "finished", "stopped": "stopped by you", "max_steps": "reached its step limit"}
        text = (f"**{name}** {verdict.get(result.status, result.status)}: {accuracy} after {result.steps} steps "
                f"({result.wall_s:.0f} s, {result.images_per_s:.1f} img/s). Saved in `{out}`; pick it as the model "
                "in the Saliency tab.")
        yield text, plot_training_curves(points, name), name
    finally:
        if timer is not None:
            timer.cancel()
        _release(job)  # keeps the last checkpoint


def ablation_job(model: str, variants: str, seeds: list[int], train_fields: dict[str, Any], fps: bool = True
                 ) -> Iterator[tuple[str, Any, list[str] | None]]:
    """Run an ablation study (``mscsa_lab.train.ablation.run_ablation``) in the job slot; yields
    (status text, the study's table once finished or None, the table's files once finished).

    Stop (the same button as training) ends the current run; the table then holds the finished runs.
    """
    from mscsa_lab.train.ablation import resolve_variants, run_ablation
    from mscsa_lab.io.export import export_stem
    from webapp.handlers import output_dir, write_table_files

    chosen = resolve_variants(variants)  # unknown variants fail here, before the slot is taken
    name = f"ablation {model} ({len(chosen)} variants x {len(seeds)} seeds)"
    job = _claim(name)
    state: dict[str, Any] = {"message": "building the variants and counting their FLOPs...", "step": None}

    def run() -> None:
        try:
            job.result = run_ablation(
                model, chosen, seeds=seeds, train=train_fields, fps=fps, stop=job.stop,
                progress=lambda fraction, message: job.events.put({"kind": "progress", "fraction": fraction,
                                                                    "message": message}),
                callbacks=[lambda event: job.events.put(event.to_dict())])
        except BaseException as error:  # noqa: BLE001 - handed to the page below
            job.error = error
        finally:
            job.events.put(None)

    job.thread = threading.Thread(target=run, name="mscsa-ablation", daemon=True)
    last_shown = 0.0
    try:
        yield f"**{name}**: {state['message']}", None, None  # as in train_job: start once Gradio holds us
        job.thread.start()
        while True:
            item = job.events.get()
            if item is None:
                break
            if item.get("kind") == "progress":
                state["message"], state["step"] = f"{100 * item['fraction']:.0f}% - {item['message']}", None
            else:
                state["step"] = f"step {item['step']}/{item['total_steps']}" + (
                    f", loss {item['loss']:.3f}" if item.get("loss") is not None else "")
            now = time.monotonic()
            if item.get("kind") == "progress" or now - last_shown >= FIGURE_INTERVAL_S:
                last_shown = now
                step = f" ({state['step']})" if state["step"] else ""
                yield f"**{name}**: {state['message']}{step}", None, None
        job.thread.join()
        if job.error is not None:
            raise job.error
        table = job.result
        files = write_table_files(table, output_dir("ablation") / export_stem(f"ablation-{variants}", model))
        verdict = "stopped by you: the table holds the runs that finished" if table.metadata.get("status") == "stopped" \
            else "finished"
        text = (f"**{name}** {verdict} in {table.metadata.get('wall_s', 0):.0f} s.\n\n"
                + "\n".join(f"- {note}" for note in table.notes))
        yield text, table.frame, files
    finally:
        _release(job)

