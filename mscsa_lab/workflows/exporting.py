"""Export one model for deployment (ONNX, TorchScript, torch.export) and say how well each file reproduces it.

The model comes from the same sources as the other actions (a ``ModelSpec``: a ``*_mscsa`` name, a Table 7
profile or a timm backbone, with an optional checkpoint; the demo model; a trained run's folder), costed
before it is built. Each file is written, loaded back and run by ``mscsa_lab.io.model_export``; the result's
table has one row per file with its largest output difference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.model_export import EXPORT_FORMATS, ExportError, export_model, export_target
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.sources import LoadedModel

__all__ = ["export_action", "check_export_requests", "EXPORT_FORMATS"]


def check_export_requests(outputs: Mapping[str, str | Path]) -> dict[str, Path]:
    """Formats known, at least one, file names with the right suffix: refused before the model is built."""
    if not outputs:
        raise ExportError("nothing to export: give at least one of --onnx FILE, --torchscript FILE, --exported FILE")
    checked = {}
    for fmt, path in outputs.items():
        if fmt not in EXPORT_FORMATS:
            raise ExportError(f"format {fmt!r} is unknown: choose from {list(EXPORT_FORMATS)}")
        if Path(path).suffix.lower() != EXPORT_FORMATS[fmt]:
            raise ExportError(f"a {fmt} file ends in {EXPORT_FORMATS[fmt]}, got {str(path)!r}")
        checked[fmt] = export_target(path, fmt)  # the exporter's own folder checks, before the model is built
    if len(set(checked.values())) < len(checked):
        raise ExportError("each format needs its own file")
    return checked


def export_action(source: LoadedModel, outputs: Mapping[str, str | Path], *, fuse: bool = False,
                  input_size: tuple[int, int] | None = None, method: str = "script") -> ActionResult:
    """Write ``source``'s model in each format of ``outputs`` (format -> file), at ``input_size`` (default:
    the size the model was made for), BatchNorms folded first with ``fuse``; TorchScript by ``method``
    ("script" or "trace")."""
    targets = check_export_requests(outputs)
    size = tuple(input_size or source.input_size)
    rows, notes = [], []
    for fmt, path in targets.items():
        options = {"method": method} if fmt == "torchscript" else {}
        report = export_model(source.model, path, fmt, input_size=size, fuse=fuse, **options)
        rows.append({"Format": fmt, "File": str(report.path), "MB": report.path.stat().st_size / 1e6,
                     "Checked with": report.checked_with,
                     "Max difference": float("nan") if report.max_difference is None else report.max_difference,
                     "Seconds": report.seconds})
        notes += [f"{fmt}: {note}" for note in report.notes if not note.startswith("BatchNorms folded")]  # in the title
    shape = "x".join(map(str, (1, getattr(source.model, "in_chans", 3), *size)))
    title = f"{source.name} exported (input {shape}{', BN folded' if fuse else ''})"
    table = ResultTable(title, pd.DataFrame(rows), metadata={"model": source.name, "input_size": list(size),
                                                               "fuse": bool(fuse), "weights": source.weights})
    worst = max((r["Max difference"] for r in rows if r["Max difference"] == r["Max difference"]), default=None)
    summary = (f"**{title}**: {len(rows)} file(s); largest difference from PyTorch "
               + ("not compared" if worst is None else f"{worst:.3g}") + f". {source.weights}")
    return ActionResult(title=title, table=table, summary=summary, notes=notes,
                        data={"max_difference": worst}, files=[Path(r["File"]) for r in rows])
