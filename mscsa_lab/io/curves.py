"""Training curves read back from the runs' own files, so they outlive the page and the server: each run's
``history.csv`` (one row per logged optimizer step, held-out results on the rows after which an evaluation
ran; an unfinished run's ``last/history.csv``), several runs overlaid in one figure as TensorBoard users
expect.

    from mscsa_lab.io.curves import read_history, plot_run_curves
    figure = plot_run_curves({"a": read_history("runs/a"), "b": read_history("runs/b")})
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from mscsa_lab.errors import UserError
from mscsa_lab.io.figures import new_figure, wrapped_title
from mscsa_lab.io.guarded import read_bytes, shown_name

__all__ = ["CurvesError", "read_history", "plot_run_curves", "MAX_HISTORY_BYTES", "MAX_POINTS"]

MAX_HISTORY_BYTES = 512 * 2**20  # a million logged steps take about 100 MB
MAX_POINTS = 2000  # points drawn per line; longer histories are thinned evenly (every evaluation is kept)
COLOURS = ("#4477aa", "#cc6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000")


class CurvesError(UserError, ValueError):
    """A run whose curves cannot be drawn (no history file, a malformed one)."""


def read_history(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """A run's per-step history (``folder/history.csv``, else the resumable state's ``last/history.csv``)
    as a DataFrame with a numeric ``step`` column, read through the guarded reader (a regular file inside
    ``root`` when given, at most ``MAX_HISTORY_BYTES``)."""
    folder = Path(folder)
    path = next((p for p in (folder / "history.csv", folder / "last" / "history.csv") if p.is_file()), None)
    if path is None:
        raise CurvesError(f"run {shown_name(folder.name)} has no history.csv yet: its curves appear once it has "
                          "finished an epoch or been stopped")
    data = read_bytes(path, MAX_HISTORY_BYTES, root, what="training history", error=CurvesError, allow_empty=True)
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise CurvesError(f"the history of run {shown_name(folder.name)} is not a readable CSV table: "
                          f"{str(error).splitlines()[0][:200] if str(error) else type(error).__name__}") from None
    if "step" not in frame.columns:
        raise CurvesError(f"the history of run {shown_name(folder.name)} has no 'step' column: is it a history.csv "
                          "written by mscsa_lab training?")
    frame = frame.apply(pd.to_numeric, errors="coerce")
    return frame.dropna(subset=["step"]).sort_values("step").reset_index(drop=True)


def _thin(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = frame.dropna(subset=[column]) if column in frame.columns else frame.iloc[0:0]
    if len(rows) > MAX_POINTS:
        rows = rows.iloc[:: -(-len(rows) // MAX_POINTS)]
    return rows


def plot_run_curves(histories: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Loss and accuracy against optimizer steps of several runs in one figure, a colour per run: training
    (a thin line over every logged step) and held-out (markers where an evaluation ran). Distilled runs
    show their held-out agreement with the teacher (and KL) as their accuracy (and loss)."""
    if not histories:
        raise CurvesError("choose one or more runs to draw their curves")
    figure, (loss_axis, accuracy_axis) = new_figure(1, 2, figsize=(10, 3.6))
    for index, (name, frame) in enumerate(histories.items()):
        colour = COLOURS[index % len(COLOURS)]
        train_loss, train_top1 = _thin(frame, "train_loss"), _thin(frame, "train_top1")
        if len(train_loss):
            loss_axis.plot(train_loss["step"], train_loss["train_loss"], color=colour, linewidth=1.0, alpha=0.8,
                           label=f"{name} train")
        if len(train_top1):
            accuracy_axis.plot(train_top1["step"], train_top1["train_top1"], color=colour, linewidth=1.0, alpha=0.5,
                               label=f"{name} train")
        held_loss = next((c for c in ("val_loss", "val_kl") if c in frame.columns and frame[c].notna().any()), None)
        if held_loss:
            rows = frame.dropna(subset=[held_loss])
            loss_axis.plot(rows["step"], rows[held_loss], "o--", color=colour, markersize=4,
                           label=f"{name} held-out" + (" KL" if held_loss == "val_kl" else ""))
        held = next((c for c in ("val_top1", "val_agreement") if c in frame.columns and frame[c].notna().any()), None)
        if held:
            rows = frame.dropna(subset=[held])
            accuracy_axis.plot(rows["step"], rows[held], "o--", color=colour, markersize=4,
                               label=f"{name} held-out" + (" agreement" if held == "val_agreement" else ""))
    loss_axis.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    accuracy_axis.set(xlabel="optimizer step", ylabel="%", title="Top-1 accuracy (distilled: agreement)",
                      ylim=(0, 100))
    for axis in (loss_axis, accuracy_axis):
        if axis.lines:
            axis.legend(loc="best", fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(wrapped_title(title or "Training curves of " + ", ".join(histories), 10))
    figure.tight_layout()
    return figure
