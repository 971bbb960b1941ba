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
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mscsa_lab.io.checkpoints import CheckpointError, read_state_dict, save_checkpoint
from mscsa_lab.train.config import TrainingInputError

__all__ = ["LAST", "save_training_state", "load_training_state", "capture_rng", "restore_rng", "find_last_state"]

LAST = "last"
STATE_FILE = "state.pt"
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
                        state: dict[str, Any]) -> Path:
    """Write ``out_dir/last/`` atomically (temporary folder, then renames). ``state`` holds the
    optimizer/scheduler/scaler state dicts, the position, RNG states, history and configuration."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / LAST
    temporary = out_dir / f".{LAST}.tmp-{os.getpid()}"
    previous = out_dir / f".{LAST}.old"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    save_checkpoint(model, temporary / "model.safetensors")
    if ema_model is not None:
        save_checkpoint(ema_model, temporary / "ema.safetensors")
    for written in temporary.iterdir():
        readable_by_umask(written)
    torch.save({"format": FORMAT, **state}, temporary / STATE_FILE)
    # Everything is on disk; swap it in. Between the two renames only .last.old exists, and
    # find_last_state falls back to it.
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        os.replace(final, previous)
    os.replace(temporary, final)
    if previous.exists():
        shutil.rmtree(previous)
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
    ``ema``) state dicts and ``path``. Raises ``TrainingInputError`` when there is nothing to resume."""
    path = find_last_state(out_dir)
    if path is None:
        raise TrainingInputError(
            f"nothing to resume in {str(out_dir)!r}: no complete '{LAST}/' training state there (it is written at "
            f"the end of every epoch). Start without --resume, or point --out at the earlier run."
        )
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a refused or corrupt file is one user-facing message
        raise TrainingInputError(f"the training state in {str(path)!r} cannot be read: {error}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingInputError(f"{str(path / STATE_FILE)!r} is not a training state written by mscsa_lab")
    try:
        state["model"] = read_state_dict(path / "model.safetensors")
        if (path / "ema.safetensors").is_file():
            state["ema"] = read_state_dict(path / "ema.safetensors")
    except CheckpointError as error:
        raise TrainingInputError(f"the training state in {str(path)!r} is damaged: {error}") from None
    state["path"] = str(path)
    return state

