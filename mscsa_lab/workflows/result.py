"""What every action returns: tables, figures, a short summary, notes and warnings, in one object that
the command line prints and writes (``-o``, ``--plot``) and the app shows and offers for download."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from mscsa_lab.errors import UserError
from mscsa_lab.io.export import FORMATS, ResultTable, metadata_path

__all__ = ["ActionResult", "OutputError", "check_output_paths", "TABLE_SUFFIXES", "FIGURE_SUFFIXES"]

TABLE_SUFFIXES = (".csv", ".md", ".tex", ".json")
FIGURE_SUFFIXES = (".svg", ".png")


class OutputError(UserError, ValueError):
    """An output file name the project cannot write (unknown format)."""


def check_output_paths(outputs: Sequence[str] = (), plots: Sequence[str] = ()) -> None:
    """Refuse bad output names before minutes of work, not after."""
    for path in outputs:
        if Path(path).suffix.lower() not in FORMATS:
            raise OutputError(f"cannot write table {str(path)!r}: use a file name ending in "
                              f"{', '.join(sorted(FORMATS))}")
    for path in plots:
        if Path(path).suffix.lower() not in FIGURE_SUFFIXES:
            raise OutputError(f"cannot write figure {str(path)!r}: use a .png or .svg file name")


@dataclass
class ActionResult:
    """``table`` is the action's main table (written by ``-o``); ``tables`` holds the others by name
    (memory totals, latency...); ``figures`` by name, the first being the main one (``--plot``);
    ``summary`` a few lines of Markdown said first; ``data`` what else a caller may need (the chosen
    configuration of a budget fit, probabilities of a saliency map)."""

    title: str
    table: ResultTable | None = None
    tables: dict[str, ResultTable] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def figure(self) -> Figure | None:
        return next(iter(self.figures.values()), None)

    def all_notes(self) -> list[str]:
        """The action's notes, then the main table's (uncounted operators, conventions), without repeats."""
        seen: list[str] = []
        for note in [*self.notes, *(self.table.notes if self.table is not None else [])]:
            if note and note not in seen:
                seen.append(note)
        return seen

    # ------------------------------------------------------------------ files
    def write_requested(self, outputs: Sequence[str] = (), plots: Sequence[str] = (), digits: int = 3,
                        latex_columns: Sequence[str] | None = None) -> list[Path]:
        """The main table in each of ``outputs`` (format by suffix) and the main figure in each of ``plots``."""
        check_output_paths(outputs, plots)
        if outputs and self.table is None:
            raise OutputError(f"{self.title} has no table to write")
        if plots and self.figure is None:
            raise OutputError(f"{self.title} has no figure to write")
        written = [Path(self.table.write(path, digits, list(latex_columns) if latex_columns else None))
                   for path in outputs]
        written += [save_figure(self.figure, path) for path in plots]
        self.files += written
        return written

    def write_all(self, folder: Path, stem: str) -> list[Path]:
        """Every table in every format (CSV with its metadata sidecar, Markdown, LaTeX, JSON) and every
        figure as SVG and PNG, named ``stem`` (+ the table's or figure's name for all but the main ones)."""
        written: list[Path] = []
        tables = ([("", self.table)] if self.table is not None else []) + [(f"_{k}", t) for k, t in self.tables.items()]
        for suffix_name, table in tables:
            for suffix in TABLE_SUFFIXES:
                written.append(Path(table.write(folder / f"{stem}{suffix_name}{suffix}")))
            written.append(metadata_path(folder / f"{stem}{suffix_name}.csv"))
        for index, (name, figure) in enumerate(self.figures.items()):
            base = stem if index == 0 else f"{stem}_{name}"
            written += [save_figure(figure, folder / f"{base}{suffix}") for suffix in FIGURE_SUFFIXES]
        self.files += written
        return written


def save_figure(figure: Figure, path: str | Path) -> Path:
    """A figure as PNG (150 dpi) or SVG (text kept as text), by the file's suffix."""
    from mscsa_lab.io.figures import save_figure as save

    return save(figure, path)
