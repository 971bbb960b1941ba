"""Figures for the profiler and the comparison tables (matplotlib, headless), as PNG or SVG.

Figures are plain ``matplotlib.figure.Figure`` objects, not pyplot ones: nothing is registered in
pyplot's global state, so a long-running app frees each figure when it is no longer referenced.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mscsa_lab.io.export import ExportError

__all__ = ["plot_component_breakdown", "plot_comparison", "plot_latency", "plot_throughput", "save_figure",
           "new_figure", "figure_for_table", "wrapped_title", "FIGURE_FORMATS"]

FIGURE_FORMATS = (".png", ".svg")


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """A (figure, axes) pair like ``plt.subplots``, without pyplot."""
    figsize = kwargs.pop("figsize", None)
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **kwargs)


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ExportError(f"figures are written as {' or '.join(FIGURE_FORMATS)}, not {path.suffix or 'no suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_component_breakdown(frame: pd.DataFrame, title: str = "", mscsa_only: bool = False) -> Figure:
    """Horizontal bars of each top-level component's share of FLOPs and of parameters.

    ``frame`` is ``ProfileReport.to_frame()``; ``mscsa_only`` leaves the backbone out so the MSCSA
    parts are readable next to each other.
    """
    rows = frame[(frame["Level"] == 0) & (frame["Group"] != "total")]
    if mscsa_only:
        rows = rows[rows["Group"] != "backbone"]
    rows = rows.iloc[::-1]
    figure, axes = new_figure(1, 2, figsize=(11, 0.35 * len(rows) + 1.5), sharey=True)
    y = np.arange(len(rows))
    for axis, column, colour in ((axes[0], "FLOPs share (%)", "#1f77b4"), (axes[1], "Params share (%)", "#ff7f0e")):
        values = rows[column].to_numpy()
        axis.barh(y, values, color=colour)
        for yi, value in zip(y, values):
            axis.text(value, yi, f" {value:.2f}", va="center", fontsize=7)
        axis.set_xlabel(f"{column} of the whole model")
        axis.margins(x=0.2)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, prune="upper"))  # no label overhanging the edge
    axes[0].set_yticks(y, rows["Component"].tolist(), fontsize=8)
    figure.suptitle(wrapped_title(title or "Per-component cost", figure.get_figwidth()))
    figure.tight_layout(pad=1.6)  # room for the tick labels that overhang the axes
    return figure


def plot_comparison(frame: pd.DataFrame, title: str = "") -> Figure:
    """FLOPs of each backbone alone and with MSCSA (bars), the paper's figures as markers."""
    models = frame["Model"].tolist()
    x = np.arange(len(models))
    width = 0.38
    figure, axis = new_figure(figsize=(max(6, 1.2 * len(models) + 2), 4))
    axis.bar(x - width / 2, frame["FLOPs (G)"], width, label="backbone (measured)")
    axis.bar(x + width / 2, frame["+MSCSA FLOPs (G)"], width, label="+MSCSA (measured)")
    if "Paper FLOPs (G)" in frame and frame["Paper FLOPs (G)"].notna().any():
        axis.scatter(x - width / 2, frame["Paper FLOPs (G)"], marker="_", s=300, color="black", label="paper", zorder=3)
        axis.scatter(x + width / 2, frame["Paper +MSCSA FLOPs (G)"], marker="_", s=300, color="black", zorder=3)
    for xi, delta in zip(x, frame["dFLOPs (%)"]):
        axis.text(xi + width / 2, frame["+MSCSA FLOPs (G)"].iloc[int(xi)], f"+{delta:.1f}%", ha="center",
                  va="bottom", fontsize=8)
    axis.set_xticks(x, models, rotation=20, ha="right")
    axis.set_ylabel("GFLOPs (multiply-adds)")
    figure.suptitle(wrapped_title(title or "Backbones with and without MSCSA", figure.get_figwidth()))
    # Headroom above the tallest bar for its percentage and a one-row legend, so neither covers the other.
    tallest = float(np.nanmax(frame[["FLOPs (G)", "+MSCSA FLOPs (G)"]].to_numpy(dtype=float)))
    axis.set_ylim(0, tallest * 1.35 if np.isfinite(tallest) and tallest > 0 else 1)
    axis.legend(loc="upper left", ncol=3, fontsize=8)
    figure.tight_layout(pad=1.6)  # room for the tick labels that overhang the axes
    return figure


def plot_latency(frame: pd.DataFrame, title: str = "", mscsa_only: bool = True) -> Figure:
    """Each top-level component's share of time beside its share of FLOPs (``LatencyReport.frame``).
    Bars of time well above FLOPs mark memory- or launch-bound parts."""
    rows = frame[(frame["Level"] == 0)]
    if mscsa_only:
        rows = rows[~rows["Group"].isin(["backbone", "other"])]
    rows = rows.iloc[::-1]
    y = np.arange(len(rows))
    height = 0.4
    figure, axis = new_figure(figsize=(8, 0.45 * len(rows) + 1.5))
    axis.barh(y + height / 2, rows["Time share (%)"], height, label="share of time", color="#d62728")
    axis.barh(y - height / 2, rows["FLOPs share (%)"], height, label="share of FLOPs", color="#1f77b4")
    axis.set_yticks(y, rows["Component"].tolist(), fontsize=8)
    axis.set_xlabel("% of the whole model")
    axis.xaxis.set_major_locator(MaxNLocator(nbins=6, prune="upper"))
    figure.suptitle(wrapped_title(title or "Per-component latency", figure.get_figwidth()))
    axis.legend()
    figure.tight_layout(pad=1.6)  # room for the tick labels that overhang the axes
    return figure


def wrapped_title(text: str, width_inches: float, size: float = 12.0) -> str:
    """``text`` broken at word boundaries into lines that fit ``width_inches`` at ``size`` points (each line
    measured with the font matplotlib draws it in), so a long title is never cut at the figure's edges."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    if not text:
        return text
    font = FontProperties(size=size)
    room = 0.92 * width_inches * 72.0  # points, with a margin for the figure's edges

    def fits(line: str) -> bool:
        return text_to_path.get_text_width_height_descent(line, font, ismath=False)[0] <= room

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def _unstable_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose Check says they are not findings (noise, an impossible value, a busy machine)."""
    if "Check" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return np.array([str(check).strip() not in ("ok", "", "nan") for check in frame["Check"]])


def plot_throughput(frame: pd.DataFrame, title: str = "") -> Figure:
    """FPS change from adding MSCSA (reference and fast path) per backbone with its 95% interval as error
    bars, the paper's beside; rows the Check column does not call findings are drawn hatched and pale."""
    models = frame["Model"].tolist()
    x = np.arange(len(models))
    columns = [c for c in ("dFPS (%)", "dFPS fast (%)", "dFPS compiled (%)", "Paper dFPS (%)") if c in frame]
    width = 0.8 / len(columns)
    figure_width = max(6, 1.2 * len(models) + 2)
    figure, axis = new_figure(figsize=(figure_width, 4.2))
    unstable = _unstable_rows(frame)
    for index, column in enumerate(columns):
        values = frame[column].astype(float).fillna(0).to_numpy()
        low_column, high_column = column.replace(" (%)", " low (%)"), column.replace(" (%)", " high (%)")
        errors = None
        if low_column in frame and high_column in frame:
            low = frame[low_column].astype(float).to_numpy()
            high = frame[high_column].astype(float).to_numpy()
            errors = np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))
        positions = x + (index - (len(columns) - 1) / 2) * width
        bars = axis.bar(positions, values, width, label=column, yerr=errors, capsize=3 if errors is not None else 0)
        if not column.startswith("Paper"):
            for bar, pale in zip(bars, unstable):
                if pale:
                    bar.set_alpha(0.35)
                    bar.set_hatch("//")
    if unstable.any():
        from matplotlib.patches import Patch

        handles, labels = axis.get_legend_handles_labels()
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//"))
        labels.append("not a finding (see Check)")
        axis.legend(handles, labels, fontsize=8)
    else:
        axis.legend(fontsize=8)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(x, models, rotation=20, ha="right")
    axis.set_ylabel("FPS change from adding MSCSA (%)\n(bars: 95% interval)")
    figure.suptitle(wrapped_title(title or "Throughput cost of MSCSA", figure_width))
    figure.tight_layout(pad=1.6)  # room for the tick labels that overhang the axes
    return figure


def plot_training_curves(points: list[dict], title: str = "") -> Figure:
    """Loss and accuracy against optimizer steps: training (every logged step) and held-out (every
    epoch). ``points`` are ``ProgressEvent.to_dict()`` rows; keys missing from a row are skipped."""
    figure, (loss_axis, accuracy_axis) = new_figure(1, 2, figsize=(9, 3.2))
    steps = [p for p in points if p.get("kind") == "step" and p.get("loss") is not None]
    epochs = list({p["step"]: p for p in points if p.get("kind") in ("epoch", "end") and p.get("metrics")}.values())
    if steps:
        loss_axis.plot([p["step"] for p in steps], [p["loss"] for p in steps], label="train", color="#4477aa")
        trained = [p for p in steps if p.get("accuracy") is not None]
        accuracy_axis.plot([p["step"] for p in trained], [p["accuracy"] for p in trained], label="train",
                           color="#4477aa")
    held_out = [p for p in epochs if p["metrics"].get("loss") is not None]
    if held_out:
        loss_axis.plot([p["step"] for p in held_out], [p["metrics"]["loss"] for p in held_out], "o-", label="val",
                       color="#cc6677")
    held_out = [p for p in epochs if p["metrics"].get("top1") is not None]
    if held_out:
        accuracy_axis.plot([p["step"] for p in held_out], [p["metrics"]["top1"] for p in held_out], "o-",
                           label="val top-1", color="#cc6677")
    loss_axis.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    accuracy_axis.set(xlabel="optimizer step", ylabel="accuracy (%)", title="Top-1 accuracy", ylim=(0, 100))
    last_step = max([p["step"] for p in points if isinstance(p.get("step"), (int, float))], default=1)
    for axis in (loss_axis, accuracy_axis):
        axis.set_xlim(0, last_step * 1.05 + 1)  # steps start at 0; a single point still gets a readable axis
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, prune="upper"))
        if axis.lines:
            axis.legend(loc="best", fontsize=8)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(wrapped_title(title, figure.get_figwidth()))
    figure.tight_layout(pad=1.6)  # room for the tick labels that overhang the axes
    return figure


def figure_for_table(table) -> Figure | None:
    """The chart that belongs to a saved table (``ResultTable``), told by its columns; None for tables
    without one (e.g. a training history)."""
    columns = set(table.frame.columns)
    if "Time share (%)" in columns:
        return plot_latency(table.frame, table.title)
    if {"Component", "FLOPs share (%)", "Level", "Group"} <= columns:
        return plot_component_breakdown(table.frame, table.title)
    if {"Model", "FLOPs (G)", "+MSCSA FLOPs (G)"} <= columns:
        return plot_comparison(table.frame, table.title)
    if {"Model", "FPS", "+MSCSA FPS", "dFPS (%)"} <= columns:
        return plot_throughput(table.frame, table.title)
    return None
