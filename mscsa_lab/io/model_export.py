"""Export a model for deployment (ONNX, TorchScript, torch.export), and check what was written.

Each export writes the file, loads it back the way a deployment would (onnxruntime, ``torch.jit.load``,
``torch.export.load``), runs it on one random input and compares the outputs with the PyTorch model's
on the same input: the report gives the largest absolute difference. The model is exported in eval
mode, optionally with its BatchNorms folded first (``fuse=True``, ``MSCSANet.fuse``), for one input
size (default: the model's pretrained config, else 224x224) and batch 1.

- ONNX (``.onnx``): ``torch.onnx.export`` (the torch.export-based exporter; needs the ``onnx`` and
  ``onnxscript`` packages). It is checked with onnxruntime when that is installed (``pip install
  'mscsa-lab[onnx]'``); without it the file is only validated with ``onnx.checker`` and the report says
  that outputs were not compared (``max_difference`` is None).
- TorchScript (``.pt``): ``torch.jit.script`` (every ``*_mscsa`` model scripts); ``method="trace"``
  records one run with ``torch.jit.trace`` instead, which fixes the control flow to that input's path
  (the report says so). There is no silent fallback from one to the other.
- torch.export (``.pt2``): an ``ExportedProgram`` saved with ``torch.export.save`` (shapes fixed to the
  example input), reloaded with ``torch.export.load``.

    >>> from mscsa_lab.io.model_export import export_model
    >>> report = export_model("resnet18_mscsa", "model.onnx", "onnx", fuse=True, input_size=(224, 224))
    >>> report.max_difference  # doctest: +SKIP
    3.1e-06
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mscsa_lab.errors import UserError

__all__ = ["ExportError", "ExportReport", "EXPORT_FORMATS", "export_model", "export_target", "export_onnx", "export_torchscript",
           "export_exported_program", "onnxruntime_available"]

# format -> file suffix
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}
_ONNX_SINGLE_FILE_LIMIT = 1.8e9  # bytes of weights: ONNX files hold at most 2 GB, beyond it weights go to a .data file


class ExportError(UserError):
    """A model cannot be exported as asked (unsupported format or model, bad path or input size)."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how well the reloaded file reproduces the PyTorch model."""

    path: Path
    format: str
    max_difference: float | None  # largest |reloaded - PyTorch| over all outputs; None: outputs not compared
    seconds: float  # export, reload and check together
    checked_with: str  # "onnxruntime", "onnx.checker (outputs not compared)", "torch.jit.load", "torch.export.load"
    input_shape: tuple[int, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        difference = "not compared" if self.max_difference is None else f"max difference {self.max_difference:.3g}"
        return (f"{self.format}: wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB), input "
                f"{'x'.join(map(str, self.input_shape))}, checked with {self.checked_with}: {difference} "
                f"({self.seconds:.1f} s)" + "".join(f"\n  note: {note}" for note in self.notes))


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


# --------------------------------------------------------------------------- shared steps
def _resolve_model(model: nn.Module | str, input_size: tuple[int, int] | None) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, str) or not model.strip():
        raise ExportError(f"model must be an nn.Module or a model name, got {model!r}")
    from mscsa_lab.registry import build_named_model  # models are built on demand only

    return build_named_model(model.strip(), input_size=input_size or (224, 224))


def _input_shape(model: nn.Module, input_size: Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels = int(getattr(model, "in_chans", None) or (cfg.get("input_size") or (3,))[0])
    if input_size is None:
        input_size = tuple((cfg.get("input_size") or (3, 224, 224))[-2:])
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 16 <= s <= 4096 for s in size):
        raise ExportError(f"input_size must be (height, width) in pixels from 16 to 4096, got {input_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise ExportError(f"batch_size must be a whole number from 1 to 64, got {batch_size!r}")
    return (batch_size, channels, *size)


def _prepare(model: nn.Module, fuse: bool) -> nn.Module:
    """An eval-mode copy of ``model`` (BN folded with ``fuse``): exporting never changes the caller's model."""
    model = copy.deepcopy(model).eval()
    if fuse:
        if not callable(getattr(model, "fuse", None)):
            raise ExportError(f"{type(model).__name__} has no fuse(): export it with fuse=False")
        model = model.fuse()
    return model


def export_target(path: str | Path, fmt: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise ExportError(f"{path} is a folder: give a file name, e.g. {path / ('model' + EXPORT_FORMATS[fmt])}")
    if not path.parent.is_dir():
        raise ExportError(f"folder {path.parent} does not exist: create it first or choose another path")
    return path


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flatten(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in _flatten(value)]
    raise ExportError(f"cannot compare an output of type {type(output).__name__}")


def _max_difference(reference: list[torch.Tensor], reloaded: list[Any]) -> float:
    if len(reference) != len(reloaded):
        raise ExportError(f"the exported model returns {len(reloaded)} outputs, PyTorch {len(reference)}")
    worst = 0.0
    for ref, out in zip(reference, reloaded):
        out = torch.as_tensor(out)
        if tuple(out.shape) != tuple(ref.shape):
            raise ExportError(f"the exported model returns shape {tuple(out.shape)}, PyTorch {tuple(ref.shape)}")
        worst = max(worst, float((out.to(ref.dtype) - ref).abs().max()) if ref.numel() else 0.0)
    return worst


def _run(fmt: str, model: nn.Module | str, path: str | Path, input_size: Sequence[int] | None, fuse: bool,
         batch_size: int, seed: int, write_and_check: Callable[..., tuple[str, float | None, list[str]]]) -> ExportReport:
    start = time.perf_counter()
    target = export_target(path, fmt)
    model = _prepare(_resolve_model(model, None if input_size is None else tuple(input_size)), fuse)
    shape = _input_shape(model, input_size, batch_size)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = [t.detach() for t in _flatten(model(example))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        checked_with, difference, notes = write_and_check(model, example, target, reference)
    if fuse:
        notes = ["BatchNorms folded into the convs before export (fuse=True)", *notes]
    return ExportReport(target, fmt, difference, time.perf_counter() - start, checked_with, shape, tuple(notes))


def _failed(what: str, error: Exception) -> ExportError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ExportError(f"{what} failed: {type(error).__name__}: {first[:500]}")


# --------------------------------------------------------------------------- the formats
def export_onnx(model: nn.Module | str, path: str | Path, *, input_size: Sequence[int] | None = None,
                fuse: bool = False, batch_size: int = 1, opset_version: int | None = None,
                seed: int = 0) -> ExportReport:
    """Write ``model`` as ONNX (weights in the file up to 2 GB), check it with onnxruntime when it is
    installed, otherwise validate it with ``onnx.checker`` and leave the outputs uncompared."""

    def write_and_check(model, example, target, reference):
        for package in ("onnx", "onnxscript"):
            if importlib.util.find_spec(package) is None:
                raise ExportError(f"ONNX export needs the {package!r} package: pip install 'mscsa-lab[onnx]'")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
                torch.onnx.export(model, (example,), str(target), dynamo=True, opset_version=opset_version,
                                  input_names=["image"], external_data=weights > _ONNX_SINGLE_FILE_LIMIT)
        except ExportError:
            raise
        except Exception as error:  # noqa: BLE001 - the exporter raises many types
            raise _failed("ONNX export", error) from error
        if not onnxruntime_available():
            import onnx

            onnx.checker.check_model(str(target))
            return ("onnx.checker (outputs not compared)", None,
                    ["onnxruntime is not installed: pip install 'mscsa-lab[onnx]' to compare outputs"])
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        return "onnxruntime", _max_difference(reference, [torch.from_numpy(o) for o in outputs]), []

    return _run("onnx", model, path, input_size, fuse, batch_size, seed, write_and_check)


def export_torchscript(model: nn.Module | str, path: str | Path, *, input_size: Sequence[int] | None = None,
                       fuse: bool = False, batch_size: int = 1, method: str = "script",
                       seed: int = 0) -> ExportReport:
    """Write ``model`` as TorchScript (``method``: "script", or "trace" to record one run) and reload it."""
    if method not in ("script", "trace"):
        raise ExportError(f"method={method!r}: choose 'script' or 'trace'")

    def write_and_check(model, example, target, reference):
        try:
            if method == "script":
                scripted = torch.jit.script(model)
            else:
                scripted = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(scripted, str(target))
        except Exception as error:  # noqa: BLE001 - TorchScript raises many types
            hint = " (method='trace' records one run instead)" if method == "script" else ""
            raise _failed(f"TorchScript {method}{hint}", error) from error
        loaded = torch.jit.load(str(target))
        with torch.no_grad():
            difference = _max_difference(reference, _flatten(loaded(example)))
        notes = [] if method == "script" else [
            "traced: the file replays the operations of one run, control flow fixed to this input's path"]
        return "torch.jit.load", difference, notes

    return _run("torchscript", model, path, input_size, fuse, batch_size, seed, write_and_check)


def export_exported_program(model: nn.Module | str, path: str | Path, *, input_size: Sequence[int] | None = None,
                            fuse: bool = False, batch_size: int = 1, seed: int = 0) -> ExportReport:
    """Write ``model`` as a ``torch.export`` ExportedProgram (``torch.export.save``) and reload it."""

    def write_and_check(model, example, target, reference):
        try:
            program = torch.export.export(model, (example,))
            torch.export.save(program, str(target))
        except Exception as error:  # noqa: BLE001 - torch.export raises many types
            raise _failed("torch.export", error) from error
        loaded = torch.export.load(str(target)).module()
        with torch.no_grad():
            difference = _max_difference(reference, _flatten(loaded(example)))
        return "torch.export.load", difference, [f"shapes fixed to the example input {tuple(example.shape)}"]

    return _run("exported", model, path, input_size, fuse, batch_size, seed, write_and_check)


_EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "exported": export_exported_program}
_FORMAT_OPTIONS = {"onnx": ("opset_version",), "torchscript": ("method",)}


def export_model(model: nn.Module | str, path: str | Path, format: str | None = None, **options: Any) -> ExportReport:
    """Export ``model`` (a module, or a name ``build_named_model`` knows: ``resnet50_mscsa``, a Table 7
    profile, a timm backbone) to ``path`` in ``format`` ("onnx", "torchscript" or "exported"; default:
    from the suffix, .onnx / .pt / .pt2). ``options``: ``input_size``, ``fuse``, ``batch_size``, ``seed``;
    ``opset_version`` (ONNX) and ``method`` (TorchScript)."""
    if format is None:
        by_suffix = {suffix: name for name, suffix in EXPORT_FORMATS.items()}
        format = by_suffix.get(Path(path).suffix.lower())
        if format is None:
            raise ExportError(f"cannot tell the format from {str(path)!r}: use a .onnx, .pt or .pt2 file name, "
                              f"or give format= one of {list(EXPORT_FORMATS)}")
    if format not in _EXPORTERS:
        raise ExportError(f"format={format!r} is unknown: choose one of {list(EXPORT_FORMATS)}")
    allowed = {"input_size", "fuse", "batch_size", "seed", *_FORMAT_OPTIONS.get(format, ())}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExportError(f"{format} export takes {sorted(allowed)}, not {unknown}")
    return _EXPORTERS[format](model, path, **options)
