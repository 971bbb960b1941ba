"""Saving and loading weights safely, and the bundled demo model.

Files load only through safetensors or ``torch.load(weights_only=True)``: a checkpoint that holds
anything but tensors and plain containers is refused, never executed. Mismatched checkpoints say
which keys are missing, unexpected or of the wrong shape.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.errors import UserError

__all__ = ["CheckpointError", "save_checkpoint", "read_state_dict", "load_checkpoint", "DEMO_WEIGHTS",
           "DEMO_METADATA", "load_demo_model", "demo_metadata"]

DEMO_WEIGHTS = ASSETS_DIR / "demo_model.safetensors"
DEMO_METADATA = ASSETS_DIR / "demo_model.json"
MAX_CHECKPOINT_BYTES = 2 * 1024**3


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the model; the message says why."""


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None,
                    half: bool = False) -> Path:
    """Write the model's state dict as safetensors (optionally in fp16, to halve the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor
    safetensors.torch.save_file(state, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``weights_only`` ``.pth``/``.pt``/``.bin`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint is {path.stat().st_size / 2**30:.1f} GB: the limit is 2 GB")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path.name} is not a valid safetensors file: {error}") from None
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise CheckpointError(f"{path.name}: checkpoints are .safetensors or .pth/.pt files")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): upload the checkpoint file again")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (neither a zip archive nor a pickle): "
                              "is it the right file, or truncated?")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own message is long and advises weights_only=False, which would run the file's code.
        raise CheckpointError(
            f"{path.name} was refused: besides tensors it holds Python objects or code, which are never run "
            "here (only weights are loaded, torch.load weights_only=True). Re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as error:
        reason = _first_line(str(error)) or type(error).__name__
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (truncated or damaged?): "
                              f"{reason}") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path.name} does not hold a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (protocol byte 0x80)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def _first_line(text: str, limit: int = 200) -> str:
    """One readable line of a library's message: terminal colour codes removed, cut at ``limit``."""
    line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` (strict), converting dtypes; explain any mismatch."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def sample(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({sample(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({sample(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of the wrong shape ({sample(wrong_shape)})")
        raise CheckpointError(
            f"{Path(path).name} does not fit this model: " + "; ".join(parts)
            + ". Was it saved from the same backbone, profile and number of classes?"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def demo_metadata() -> dict[str, Any]:
    if not DEMO_METADATA.is_file():
        raise CheckpointError(
            "the demo model is missing: run `python scripts/make_demo_model.py` to generate it (about 15 minutes on CPU)"
        )
    return json.loads(DEMO_METADATA.read_text())


def load_demo_model() -> tuple[nn.Module, dict[str, Any]]:
    """The bundled demo model (backbone+MSCSA trained on the synthetic shapes) and its metadata."""
    from mscsa_lab.registry import create_mscsa_model

    meta = demo_metadata()
    model = create_mscsa_model(backbone=meta["backbone"], config=meta["mscsa"], num_classes=len(meta["classes"]),
                               img_size=tuple(meta["input_size"]), backbone_kwargs=meta.get("backbone_kwargs"))
    load_checkpoint(model, DEMO_WEIGHTS)
    return model.eval(), meta


def load_trained(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A model trained by ``mscsa_lab.train`` (``python -m mscsa_lab train``), rebuilt from
    ``DIR/model.json`` and loaded from ``DIR/model.safetensors`` with nothing else given; returns
    ``(model in eval mode, the metadata)``. The metadata holds the classes, input size and
    preprocessing (mean, std, interpolation, crop) to prepare images the way training did."""
    from mscsa_lab.registry import create_mscsa_model

    directory = Path(directory)
    meta_path = directory / "model.json"
    if not directory.is_dir():
        raise CheckpointError(f"trained model folder {str(directory)!r} does not exist")
    if not meta_path.is_file():
        raise CheckpointError(f"{str(directory)!r} holds no model.json: is it the --out folder of a training run?")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{meta_path} is not readable JSON: {error}") from None
    required = ("backbone", "mscsa", "num_classes", "classes", "input_size", "preprocessing")
    missing = [key for key in required if key not in meta] if isinstance(meta, dict) else list(required)
    if missing:
        raise CheckpointError(f"{meta_path} lacks {', '.join(missing)}: it was not written by a training run")
    weights = directory / Path(str(meta.get("weights") or "model.safetensors")).name  # never outside the folder
    height, width = (int(v) for v in meta["input_size"])
    model = create_mscsa_model(
        meta.get("profile"), backbone=meta["backbone"], config=meta["mscsa"],
        task=meta.get("task", "classification"), num_classes=int(meta["num_classes"]), img_size=(height, width),
        backbone_kwargs=meta.get("backbone_kwargs") or None,
    )
    load_checkpoint(model, weights)
    return model.eval(), meta
