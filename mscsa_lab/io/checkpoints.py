"""Saving and loading weights safely, and the bundled demo model.

Files load only through safetensors or ``torch.load(weights_only=True)``: a checkpoint that holds
anything but tensors and plain containers is refused, never executed. Before a file is loaded its
size, its kind (a regular file, inside its folder when one is given) and its number of tensors are
checked from the file's header (a safetensors header, a zip directory), so a file of 600k tensors is
refused in milliseconds rather than loaded for a minute. Mismatched checkpoints say which keys are
missing, unexpected, of the wrong shape or of the wrong type (int8, bool, fp8 or complex weights for
a float model), naming a few and counting the rest.
"""
from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from mscsa_lab.errors import UserError
from mscsa_lab.io.guarded import checked_file, parse_json, read_json, resolve_inside, shown_name
from mscsa_lab.io.numbers import human_bytes
from mscsa_lab.paths import ASSETS_DIR

__all__ = ["CheckpointError", "save_checkpoint", "read_state_dict", "load_checkpoint", "load_torch_file",
           "fit_state_dict", "DEMO_WEIGHTS", "DEMO_METADATA", "load_demo_model", "demo_metadata", "load_trained",
           "MAX_CHECKPOINT_BYTES", "MAX_TENSORS"]

DEMO_WEIGHTS = ASSETS_DIR / "demo_model.safetensors"
DEMO_METADATA = ASSETS_DIR / "demo_model.json"
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_TENSORS = 20_000  # the largest timm models hold a few thousand tensors
MAX_SAFETENSORS_HEADER_BYTES = 8 * 1024**2  # about 80k tensor entries; 20k entries take about 2 MB
MAX_PICKLE_BYTES = 64 * 1024**2  # the pickled structure of a torch.save zip (data.pkl), not its tensors
MAX_NAMES_SHOWN = 3
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the model; the message says why."""


def _sample(items: list[str], limit: int = MAX_NAMES_SHOWN) -> str:
    """A few names (each cut to 80 characters), then how many more: never a wall of keys."""
    shown = ", ".join(item if len(item) <= 80 else item[:77] + "..." for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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


def _safetensors_tensor_count(path: Path, max_tensors: int) -> int:
    """The number of tensors a safetensors file declares, read from its header alone (8 bytes of
    length, then that much JSON); ``CheckpointError`` when the header is malformed or too large."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name} is not a valid safetensors file: it is shorter than its 8-byte header")
        (length,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            too_many = f" (more than about {MAX_SAFETENSORS_HEADER_BYTES // 100:,} tensors)" if length <= size else ""
            raise CheckpointError(f"{path.name}: its safetensors header is {human_bytes(length)}{too_many}, above the "
                                  f"limit of {human_bytes(MAX_SAFETENSORS_HEADER_BYTES)}; no model here holds that "
                                  "many tensors. Is it the right file?")
        if length > size - 8:
            raise CheckpointError(f"{path.name} is not a valid safetensors file: its header claims "
                                  f"{human_bytes(length)}, more than the file holds (truncated?)")
        header = parse_json(handle.read(length), f"{path.name} is not a valid safetensors file: its header",
                            error=CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} is not a valid safetensors file: its header is not a table of tensors")
    count = len(header) - ("__metadata__" in header)
    if count > max_tensors:
        raise CheckpointError(f"{path.name} holds {count:,} tensors, above the limit of {max_tensors:,}: no model "
                              "here has that many. Is it the right file?")
    return count


def _zip_entry_count(path: Path) -> int | None:
    """Entries of a zip archive from its end-of-central-directory record (zip64 included), read from
    the file's tail only; None when the record cannot be found (the zip reader will then say why)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        tail_size = min(size, 65_536 + 22)
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            return None
        entries = struct.unpack("<H", tail[at + 10: at + 12])[0]
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if entries == 0xFFFF and locator >= 0 and locator + 20 <= len(tail):
            (record_offset,) = struct.unpack("<Q", tail[locator + 8: locator + 16])
            if record_offset + 40 <= size:
                handle.seek(record_offset)
                record = handle.read(40)
                if record[:4] == b"PK\x06\x06":
                    entries = struct.unpack("<Q", record[32:40])[0]
    return entries


def _check_torch_zip(path: Path, max_tensors: int) -> None:
    """Refuse a torch.save archive with more entries than ``max_tensors`` storages, or whose pickled
    structure (data.pkl) is too large, before ``torch.load`` reads any of it."""
    entries = _zip_entry_count(path)
    if entries is not None and entries > max_tensors + 16:
        raise CheckpointError(f"{path.name} holds {entries:,} entries, above the limit of {max_tensors:,} tensors: "
                              "no model here has that many. Is it the right file?")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (a damaged zip archive: "
                              f"{_first_line(str(error))})") from None
    if any(info.file_size > MAX_PICKLE_BYTES for info in pickles):
        raise CheckpointError(f"{path.name}: its pickled structure is larger than {human_bytes(MAX_PICKLE_BYTES)} "
                              "(millions of objects): it is not a model checkpoint")


def load_torch_file(path: str | Path, root: str | Path | None = None, max_bytes: int = MAX_CHECKPOINT_BYTES,
                    max_tensors: int = MAX_TENSORS, what: str = "checkpoint",
                    error: type[Exception] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` behind the same guards as every checkpoint: a regular
    file (inside ``root`` when given) of at most ``max_bytes``, a zip directory of at most
    ``max_tensors`` entries, and messages of our own (never PyTorch's advice to disable weights_only)."""
    resolved = checked_file(path, max_bytes, root, what, error, allow_empty=True)
    name = Path(path).name
    if resolved.stat().st_size == 0:
        raise error(f"{name} is empty (0 bytes): upload the checkpoint file again")
    if not _looks_like_torch_file(resolved):
        raise error(f"{name} is not a PyTorch checkpoint (neither a zip archive nor a pickle): "
                    "is it the right file, or truncated?")
    try:
        if zipfile.is_zipfile(resolved):
            _check_torch_zip(resolved, max_tensors)
        return torch.load(str(resolved), map_location="cpu", weights_only=True)
    except CheckpointError as problem:
        raise (problem if error is CheckpointError else error(str(problem))) from None
    except pickle.UnpicklingError:
        # PyTorch's own message is long and advises weights_only=False, which would run the file's code.
        raise error(
            f"{name} was refused: besides tensors it holds Python objects or code, which are never run "
            "here (only weights are loaded, torch.load weights_only=True). Re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, TypeError, KeyError,
            IndexError, struct.error, RecursionError) as problem:
        reason = _first_line(str(problem)) or type(problem).__name__
        if "weights_only" in reason:
            reason = "it holds something other than tensors and plain containers"
        raise error(f"{name} is not a readable PyTorch checkpoint (truncated or damaged?): {reason}") from None


def read_state_dict(path: str | Path, root: str | Path | None = None, max_bytes: int = MAX_CHECKPOINT_BYTES,
                    max_tensors: int = MAX_TENSORS) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``weights_only`` ``.pth``/``.pt``/``.bin`` file, refused
    with ``CheckpointError`` when not a regular file (inside ``root`` when given), over ``max_bytes``
    or holding more than ``max_tensors`` tensors."""
    resolved = checked_file(path, max_bytes, root, "checkpoint", CheckpointError, allow_empty=True)
    name = Path(path).name
    if resolved.suffix == ".safetensors" or Path(path).suffix == ".safetensors":
        if resolved.stat().st_size == 0:
            raise CheckpointError(f"{name} is empty (0 bytes): it is not a readable safetensors file")
        _safetensors_tensor_count(resolved, max_tensors)
        try:
            return safetensors.torch.load_file(str(resolved))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{name} is not a valid safetensors file: {_first_line(str(error))}") from None
    if Path(path).suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise CheckpointError(f"{shown_name(name)}: checkpoints are .safetensors or .pth/.pt files")
    data = load_torch_file(resolved, max_bytes=max_bytes, max_tensors=max_tensors)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{name} does not hold a state_dict (a mapping of names to tensors)")
    if len(data) > max_tensors:
        raise CheckpointError(f"{name} holds {len(data):,} tensors, above the limit of {max_tensors:,}")
    if not all(isinstance(k, str) for k in data):
        raise CheckpointError(f"{name} does not hold a state_dict: some of its names are not strings")
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


def _dtype_fits(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether a tensor of ``source`` dtype converts meaningfully into a model tensor of ``target``:
    float weights from fp16/bf16/fp32/fp64 only (int8, bool, fp8 and complex values would need the
    quantisation scale or a real part they do not carry); integer buffers from integers."""
    if target.is_floating_point:
        return source in FLOAT_DTYPES
    if target == torch.bool:
        return source == torch.bool
    if target.is_complex:
        return source.is_complex
    return not source.is_floating_point and not source.is_complex and source != torch.bool


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str = "the checkpoint"
                   ) -> dict[str, torch.Tensor]:
    """``state`` converted to the model's dtypes when every key, shape and dtype fits ``model``,
    else ``CheckpointError`` naming a few of each kind of mismatch (``name``: how to call the file)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_sample(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_sample(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of the wrong shape ({_sample(wrong_shape)})")
        raise CheckpointError(
            f"{name} does not fit this model: " + "; ".join(parts)
            + ". Was it saved from the same backbone, profile and number of classes?"
        )
    wrong_type = [f"{k} is {str(state[k].dtype).removeprefix('torch.')}" for k in own
                  if not _dtype_fits(state[k].dtype, own[k].dtype)]
    if wrong_type:
        raise CheckpointError(
            f"{name} holds {len(wrong_type)} tensor(s) of a type this model cannot use ({_sample(wrong_type)}): the "
            "model needs float weights (float32, float16, bfloat16 or float64) and integer counters. A quantised "
            "(int8/fp8), boolean or complex file is not a checkpoint of this model: load its float version"
        )
    return {k: v.to(own[k].dtype) for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: str | Path, root: str | Path | None = None) -> nn.Module:
    """Load weights into ``model`` (strict), converting float dtypes; explain any mismatch."""
    state = read_state_dict(path, root)
    model.load_state_dict(fit_state_dict(model, state, Path(path).name))
    return model


def demo_metadata() -> dict[str, Any]:
    if not DEMO_METADATA.is_file():
        raise CheckpointError(
            "the demo model is missing: run `python scripts/make_demo_model.py` to generate it (about 15 minutes on CPU)"
        )
    return read_json(DEMO_METADATA, 1024**2, what="demo model file", error=CheckpointError)


def load_demo_model() -> tuple[nn.Module, dict[str, Any]]:
    """The bundled demo model (backbone+MSCSA trained on the synthetic shapes) and its metadata."""
    from mscsa_lab.registry import create_mscsa_model

    meta = demo_metadata()
    model = create_mscsa_model(backbone=meta["backbone"], config=meta["mscsa"], num_classes=len(meta["classes"]),
                               img_size=tuple(meta["input_size"]), backbone_kwargs=meta.get("backbone_kwargs"))
    load_checkpoint(model, DEMO_WEIGHTS)
    return model.eval(), meta


def load_trained(directory: str | Path, root: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A model trained by ``mscsa_lab.train`` (``python -m mscsa_lab train``), rebuilt from
    ``DIR/model.json`` and loaded from ``DIR/model.safetensors`` with nothing else given; returns
    ``(model in eval mode, the metadata)``. The metadata holds the classes, input size and
    preprocessing (mean, std, interpolation, crop) to prepare images the way training did.

    ``model.json`` is validated field by field (``io.run_metadata``) and both files must be regular
    files inside the folder (itself inside ``root`` when given, e.g. the app's runs folder)."""
    from mscsa_lab.io.run_metadata import read_run_metadata
    from mscsa_lab.registry import create_mscsa_model

    folder = resolve_inside(directory, root, what="trained model folder", error=CheckpointError)
    if not folder.is_dir():
        raise CheckpointError(f"trained model folder {shown_name(directory)} is not a folder")
    meta = read_run_metadata(folder)
    weights = folder / (meta.get("weights") or "model.safetensors")
    height, width = meta["input_size"]
    model = create_mscsa_model(
        meta.get("profile"), backbone=meta["backbone"], config=dict(meta["mscsa"]),
        task=meta.get("task", "classification"), num_classes=meta["num_classes"], img_size=(height, width),
        backbone_kwargs=meta.get("backbone_kwargs") or None,
    )
    load_checkpoint(model, weights, root=folder)
    return model.eval(), meta
