"""The resumable training state in ``DIR/last/``, written whole or not at all.

``DIR/last/`` holds ``model.safetensors`` (and ``ema.safetensors``) for the weights and
``state.pt`` for the rest: optimizer, scheduler, grad scaler, position (epoch, samples seen in it,
optimizer steps), every process's random number generator states, the metric history and the run's
configuration. ``state.pt`` holds only tensors, numbers, strings and containers, and is read with
``torch.load(weights_only=True)``.

A new state is written to a temporary folder beside ``last/`` and renamed into place (the old one
is moved aside first and deleted after), so a crash mid-write leaves the previous complete state:
``load_training_state`` never sees a half-written checkpoint.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mscsa_lab.io.checkpoints import CheckpointError, read_state_dict, save_checkpoint
from mscsa_lab.train.config import TrainingInputError

__all__ = ["LAST", "STATE_FILE", "HISTORY_FILE", "save_training_state", "load_training_state", "capture_rng", "restore_rng", "find_last_state"]

LAST = "last"
STATE_FILE = "state.pt"
HISTORY_FILE = "history.csv"
FORMAT = "mscsa_lab.train_state/1"


def capture_rng() -> dict[str, Any]:
    """This process's torch, CUDA, NumPy and Python RNG states as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["state"].tolist()),
                     python_state["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])


def save_training_state(out_dir: str | Path, model: nn.Module, ema_model: nn.Module | None,
                        state: dict[str, Any], step_history: list[dict[str, Any]] | None = None) -> Path:
    """Write ``out_dir/last/`` atomically (temporary folder, then renames). ``state`` holds the
    optimizer/scheduler/scaler state dicts, the position, RNG states, epoch history and configuration;
    ``step_history`` (one row per logged step) goes to ``last/history.csv``. A full or read-only disk
    raises ``RunFolderError`` with the path and the space the state needs; the temporary folder is
    removed and the previous state stays."""
    from mscsa_lab.train.outputs import history_text
    from mscsa_lab.train.writing import remove_path, tensor_bytes, torch_save, write_failure

    out_dir = Path(out_dir)
    final = out_dir / LAST
    temporary = out_dir / f".{LAST}.tmp-{os.getpid()}"
    previous = out_dir / f".{LAST}.old"
    needed = tensor_bytes(model.state_dict()) * (2 if ema_model is not None else 1) + tensor_bytes(state)
    written = "model.safetensors"  # which file of last/ was being written, for the message
    try:
        if temporary.is_symlink() or temporary.exists():
            remove_path(temporary)
        temporary.mkdir()
        save_checkpoint(model, temporary / written)
        if ema_model is not None:
            written = "ema.safetensors"
            save_checkpoint(ema_model, temporary / written)
        for path in temporary.iterdir():
            readable_by_umask(path)
        written = STATE_FILE
        torch_save({"format": FORMAT, **state}, temporary / written)
        written = HISTORY_FILE
        (temporary / written).write_text(history_text(step_history or []))
        # Everything is on disk; swap it in. Between the two renames only .last.old exists, and
        # find_last_state falls back to it.
        written = ""
        if previous.is_symlink() or previous.exists():
            remove_path(previous)
        if final.is_symlink() or final.exists():
            os.replace(final, previous)
        os.replace(temporary, final)
        if previous.is_symlink() or previous.exists():
            remove_path(previous)
    except Exception as error:  # noqa: BLE001 - a failed write of any part: the message says where and why
        try:
            if temporary.is_symlink() or temporary.exists():
                remove_path(temporary)
        except OSError:
            pass
        if not isinstance(error, (OSError, RuntimeError)) and "os error" not in str(error):
            raise
        raise write_failure(error, final / written if written else final, needed) from None
    return final


def readable_by_umask(path: Path) -> None:
    """safetensors writes files as 0600; give them the usual permissions (0666 less the umask).
    The umask is read from /proc (Linux), not set and reset, which would race with other threads."""
    umask = 0o022
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    os.chmod(path, 0o666 & ~umask)


def find_last_state(out_dir: str | Path) -> Path | None:
    """``out_dir/last`` if complete, else the previous state left by an interrupted swap, else None."""
    out_dir = Path(out_dir)
    for candidate in (out_dir / LAST, out_dir / f".{LAST}.old"):
        if (candidate / STATE_FILE).is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def load_training_state(out_dir: str | Path) -> dict[str, Any]:
    """The state written by ``save_training_state``: the dict given to it, plus ``model`` (and
    ``ema``) state dicts, ``step_history`` and ``path``. Every file is read through the guarded
    readers (regular files inside the run folder, size and tensor caps, ``weights_only``) and every
    field is checked (``mscsa_lab.train.resume.check_state``); ``TrainingInputError`` says what is
    wrong, never PyTorch's own advice."""
    from mscsa_lab.io.checkpoints import load_torch_file
    from mscsa_lab.train.resume import check_state, read_step_history

    out_dir = Path(out_dir)
    path = find_last_state(out_dir)
    if path is None:
        raise TrainingInputError(
            f"nothing to resume in {str(out_dir)!r}: no complete '{LAST}/' training state there (it is written at "
            f"the end of every epoch). Start without --resume, or point --out at the earlier run."
        )
    state = load_torch_file(path / STATE_FILE, root=out_dir, what="training state", error=TrainingInputError)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingInputError(f"{str(path / STATE_FILE)!r} is not a training state written by mscsa_lab")
    try:
        state["model"] = read_state_dict(path / "model.safetensors", root=out_dir)
        if (path / "ema.safetensors").is_file():
            state["ema"] = read_state_dict(path / "ema.safetensors", root=out_dir)
    except CheckpointError as error:
        raise TrainingInputError(f"the training state in {str(path)!r} is damaged: {error}") from None
    if (path / HISTORY_FILE).is_file():
        state["step_history"] = read_step_history(path / HISTORY_FILE, out_dir)
    state["path"] = str(path)
    return check_state(state, path)
