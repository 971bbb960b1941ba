"""Continuing a run from its ``last/`` state, after checking every field of that state: its type and
range, the random number generator states, the optimizer's and scheduler's states against the
objects they will be loaded into, and the weights against the model. A state edited or damaged on
disk gets one message naming the field and what to do, never a wall of state_dict keys or PyTorch's
advice to turn off ``weights_only``.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mscsa_lab.io.guarded import shown_name
from mscsa_lab.train.config import TrainConfig, TrainingInputError

__all__ = ["check_state", "read_step_history", "restore_state", "MAX_HISTORY_BYTES"]

MAX_HISTORY_BYTES = 512 * 2**20  # a million logged steps take about 100 MB
MAX_STEPS = 10**12
_NUMBER = (int, float)


def _refuse(path: Any, detail: str) -> TrainingInputError:
    return TrainingInputError(
        f"cannot resume from {shown_name(path)}: {detail}. The training state was edited or damaged: start the run "
        f"again with --overwrite (overwrite=True), or resume from a copy you trust")


def _whole(state: dict, name: str, low: int, high: int, path: Any, why: str = "") -> int:
    value = state.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(path, f"its {name} is {_shown(value)}, not a whole number")
    if not low <= value <= high:
        raise _refuse(path, f"its {name} is {value}, outside {low}..{high}{why}")
    return value


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------- the state's own fields
def check_state(state: dict[str, Any], path: Any) -> dict[str, Any]:
    """``state`` (from ``load_training_state``) when every field is of the right type and range."""
    config = state.get("config")
    if not isinstance(config, dict):
        raise _refuse(path, f"its config is {_shown(config)}, not a table of settings")
    try:
        saved = TrainConfig.from_dict(config)
        saved.validate()
    except TrainingInputError as error:
        raise _refuse(path, f"its settings are wrong ({str(error).removeprefix('cannot train: ')})") from None
    except (TypeError, ValueError) as error:
        raise _refuse(path, f"its settings are not a training configuration ({str(error)[:200]})") from None
    total = _whole(state, "total_steps", 1, MAX_STEPS, path)
    _whole(state, "global_step", 0, total, path, f" (the run's {total} steps)")
    _whole(state, "epoch", 0, saved.epochs, path, f" (the run's {saved.epochs} epochs)")
    _whole(state, "samples_in_epoch", 0, MAX_STEPS, path)
    _whole(state, "world_size", 1, 65_536, path)
    classes = state.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes) \
            or len(classes) > 100_000:
        raise _refuse(path, f"its classes are {_shown(classes)}, not a list of class names")
    for name in ("history", "step_history"):
        rows = state.get(name, [])
        if not isinstance(rows, list) or len(rows) > 10**7 or not all(_row_ok(row) for row in rows):
            raise _refuse(path, f"its {name} is not a list of rows of numbers")
    rng = state.get("rng")
    if not isinstance(rng, list) or not 1 <= len(rng) <= 65_536:
        raise _refuse(path, f"its rng is {_shown(rng)}, not a list of random number generator states")
    for index, entry in enumerate(rng):
        problem = _rng_problem(entry)
        if problem:
            raise _refuse(path, f"its random number generator state {index} {problem}")
    for name in ("optimizer", "scheduler", "scaler"):
        if not isinstance(state.get(name, {}), dict):
            raise _refuse(path, f"its {name} state is {_shown(state.get(name))}, not a table")
    return state


def _row_ok(row: Any) -> bool:
    return isinstance(row, dict) and all(isinstance(k, str) and (v is None or _finite_number(v) or isinstance(v, str))
                                         for k, v in row.items())


def _integer_tensor(value: Any, length: int, high: int) -> bool:
    return (isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.shape == (length,)
            and bool((value >= 0).all()) and bool((value <= high).all()))


def _rng_problem(entry: Any) -> str:
    """What is wrong with one process's RNG states (as ``state.capture_rng`` writes them), or ''."""
    if not isinstance(entry, dict):
        return f"is {_shown(entry)}, not a table"
    size = torch.get_rng_state().numel()
    generator = entry.get("torch")
    if not (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8 and generator.shape == (size,)):
        return f"for torch is {_shown(generator)}, not {size} bytes"
    numpy_state = entry.get("numpy")
    if not (isinstance(numpy_state, dict) and numpy_state.get("name") == "MT19937"
            and _integer_tensor(numpy_state.get("keys"), 624, 2**32 - 1)
            and isinstance(numpy_state.get("pos"), int) and 0 <= numpy_state["pos"] <= 624
            and numpy_state.get("has_gauss") in (0, 1) and _finite_number(numpy_state.get("cached_gaussian"))):
        return "for NumPy is not a Mersenne Twister state (624 keys below 2**32, a position 0..624)"
    python_state = entry.get("python")
    if not (isinstance(python_state, dict) and python_state.get("version") == random.getstate()[0]
            and _integer_tensor(python_state.get("state"), 625, 2**32 - 1)
            and int(python_state["state"][-1]) <= 624
            and (python_state.get("gauss_next") is None or _finite_number(python_state.get("gauss_next")))):
        return "for Python is not a Mersenne Twister state (625 numbers below 2**32, the last 0..624)"
    cuda = entry.get("cuda", [])
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        return "for CUDA is not a list of byte tensors"
    return ""


def read_step_history(path: Path, root: Path) -> list[dict[str, Any]]:
    """``last/history.csv`` as rows (numbers as floats, step and epoch as whole numbers), read through
    the guarded reader (a regular file inside the run folder, at most ``MAX_HISTORY_BYTES``)."""
    import csv
    import io

    from mscsa_lab.io.guarded import read_bytes

    data = read_bytes(path, MAX_HISTORY_BYTES, root, what="step history", error=TrainingInputError, allow_empty=True)
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(data.decode("utf-8"))):
            clean: dict[str, Any] = {}
            for key, text in row.items():
                if key is None or text is None:
                    raise ValueError("a row has more fields than the header")
                value = float(text) if text != "" else None
                if value is not None and not math.isfinite(value):
                    raise ValueError(f"{key} is {text}")
                clean[key] = int(value) if key in ("step", "epoch") and value is not None else value
            rows.append(clean)
    except (UnicodeDecodeError, ValueError, csv.Error) as error:
        raise _refuse(path, f"its step history is not a table of numbers ({str(error)[:120]})") from None
    return rows


# ---------------------------------------------------------------------- against the built objects
def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, path: Any) -> None:
    own = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise _refuse(path, "its optimizer state is not a table of 'state' and 'param_groups'")
    groups = saved["param_groups"]
    if len(groups) != len(own["param_groups"]):
        raise _refuse(path, f"its optimizer has {len(groups)} parameter groups, this run's {len(own['param_groups'])} "
                            f"(was it saved with another --opt or mode?)")
    params: dict[int, torch.Tensor] = {}
    for index, (group, mine, live) in enumerate(zip(groups, own["param_groups"], optimizer.param_groups)):
        ids = group.get("params") if isinstance(group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(mine["params"]) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _refuse(path, f"its optimizer's parameter group {index} does not list this run's "
                                f"{len(mine['params'])} parameters")
        for key, value in group.items():
            if key == "params":
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            if not all(v is None or isinstance(v, (bool, str)) or _finite_number(v) for v in values):
                raise _refuse(path, f"its optimizer's {key} is {_shown(value)}, not a finite number")
        if not _finite_number(group.get("lr")) or not 0 <= group["lr"] <= 10:
            raise _refuse(path, f"its optimizer's learning rate is {_shown(group.get('lr'))}, outside 0..10")
        params.update(zip(ids, live["params"]))
    for key, entry in saved["state"].items():
        param = params.get(key)
        if param is None or not isinstance(entry, dict):
            raise _refuse(path, f"its optimizer holds state for a parameter this run does not have ({_shown(key)})")
        for name, value in entry.items():
            problem = _optimizer_value_problem(name, value, param)
            if problem:
                raise _refuse(path, f"its optimizer's {name} for parameter {key} {problem}")


def _optimizer_value_problem(name: str, value: Any, param: torch.Tensor) -> str:
    if name == "step":  # a count of updates, as a number or a one-element tensor
        count = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if not _finite_number(count) or not 0 <= count <= MAX_STEPS:
            return f"is {_shown(value)}, outside 0..{MAX_STEPS}"
        return ""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int64, torch.int32)):
            return f"is a {str(value.dtype).removeprefix('torch.')} tensor"
        if value.numel() > 1 and value.shape != param.shape and not (value.ndim < param.ndim
                                                                        and value.numel() < param.numel()):
            return f"has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return "holds NaN or infinite values"
        return ""
    if value is None or isinstance(value, bool):
        return ""
    if not _finite_number(value) or not -MAX_STEPS <= value <= MAX_STEPS:
        return f"is {_shown(value)}, not a finite number"
    return ""


def _check_plain_state(saved: dict, fresh: dict, what: str, path: Any) -> None:
    """A scheduler's or grad scaler's state: only the fields the fresh object has, of the same kind."""
    for key, value in saved.items():
        if key not in fresh:
            raise _refuse(path, f"its {what} state has a field {_shown(key)} that the {what} does not have")
        mine = fresh[key]
        if isinstance(mine, str) or isinstance(value, str):
            ok, expected = value == mine, repr(mine)
        elif isinstance(mine, bool) or isinstance(value, bool):
            ok, expected = isinstance(value, bool) or value is None, "true or false"
        elif isinstance(mine, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and len(value) == len(mine) and all(
                _finite_number(v) and 0 <= v <= MAX_STEPS for v in value)
            expected = f"a list of {len(mine)} numbers from 0 to {MAX_STEPS}"
        else:
            ok = value is None or (_finite_number(value) and -MAX_STEPS <= value <= MAX_STEPS)
            expected = "a finite number"
        if not ok:
            raise _refuse(path, f"its {what}'s {key} is {_shown(value)}, expected {expected}")


def _weights(model: nn.Module, state: dict, name: str, path: Any) -> dict[str, torch.Tensor]:
    from mscsa_lab.io.checkpoints import CheckpointError, fit_state_dict

    try:
        fitted = fit_state_dict(model, state, name)
    except CheckpointError as error:
        raise _refuse(path, str(error)) from None
    bad = [k for k, v in fitted.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise _refuse(path, f"{name} holds NaN or infinite values ({', '.join(bad[:3])})")
    return fitted


def restore_state(resume_state: dict[str, Any], model: nn.Module, optimizer, scheduler, ema, scaler, info,
                  config: TrainConfig, total_steps: int, samples_per_epoch: int, classes: list[str],
                  notes: list[str]):
    """Check, then load, a resumed run's weights, optimizer, scheduler, EMA, scaler and RNG states;
    returns (global step, epoch, samples of that epoch already seen, epoch history, step history)."""
    from mscsa_lab.train.parts import seed_everything
    from mscsa_lab.train.state import restore_rng

    path = resume_state["path"]
    if list(resume_state["classes"]) != list(classes):
        raise TrainingInputError(f"cannot resume from {shown_name(path)}: the run was trained on the classes "
                                 f"{_shown(resume_state['classes'])}, the data now has {_shown(classes)}: resume on "
                                 f"the same data, or start a new run")
    model.load_state_dict(_weights(model, resume_state["model"], "last/model.safetensors", path))
    _check_optimizer(resume_state["optimizer"], optimizer, path)
    same_schedule = resume_state.get("total_steps") == total_steps
    if scheduler is not None and resume_state.get("scheduler") and same_schedule:
        _check_plain_state(resume_state["scheduler"], scheduler.state_dict(), "scheduler", path)
    if scaler is not None and resume_state.get("scaler"):
        _check_plain_state(resume_state["scaler"], scaler.state_dict(), "grad scaler", path)
    ema_weights = _weights(ema.module, resume_state["ema"], "last/ema.safetensors", path) \
        if ema is not None and "ema" in resume_state else None
    global_step, start_epoch = int(resume_state["global_step"]), int(resume_state["epoch"])
    same_world = int(resume_state.get("world_size", 1)) == info.world_size
    skip = int(resume_state.get("samples_in_epoch", 0)) if same_world else 0
    if skip > samples_per_epoch:
        raise _refuse(path, f"its samples_in_epoch is {skip}, more than an epoch's {samples_per_epoch} samples")
    try:
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler") and same_schedule:
            scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise _refuse(path, f"its optimizer state does not fit this run ({str(error).splitlines()[0][:160]})") \
            from None
    if ema_weights is not None:
        ema.module.load_state_dict(ema_weights)
    history = list(resume_state.get("history", []))
    step_history = list(resume_state.get("step_history", []))
    if not same_world and resume_state.get("samples_in_epoch"):
        notes.append(f"resumed with {info.world_size} processes instead of {resume_state.get('world_size')}: "
                     f"epoch {start_epoch + 1} restarts from its beginning")
    rng_states = resume_state.get("rng", [])
    if same_world and info.rank < len(rng_states):
        try:
            restore_rng(rng_states[info.rank])
        except (RuntimeError, ValueError, TypeError, OverflowError) as error:
            raise _refuse(path, f"its random number generator state cannot be restored ({str(error)[:120]})") \
                from None
    else:
        seed_everything(config.seed + info.rank + 1000 * start_epoch)
    if scheduler is not None:
        scheduler.step_update(num_updates=global_step)
    notes.append(f"resumed from {resume_state['path']} at epoch {start_epoch + 1}, step {global_step}")
    return global_step, start_epoch, skip, history, step_history

