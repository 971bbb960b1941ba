"""Result tables with their metadata, written as CSV, Markdown, LaTeX (booktabs) or JSON.

Every format carries the metadata (input size, batch, library versions, device, date) and the notes
(e.g. uncounted operators), and ``read_table`` parses each format back to the same numbers
(Markdown and LaTeX to the printed digits). Markdown and LaTeX print numbers by the one rule of
``mscsa_lab.io.numbers`` (significant figures, percentages with one decimal, integer FPS); LaTeX
keeps to the columns a paper needs (``paper_columns``, or the ``columns`` asked for) so the table
fits a column. A CSV file holds the table alone, so that plain
``pandas.read_csv(path)`` (or a spreadsheet) reads it as it is; its title, metadata and notes go to
the JSON file beside it, ``<name>.csv.meta.json`` (``metadata_path``).
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mscsa_lab.errors import UserError
from mscsa_lab.io.numbers import DEFAULT_DIGITS, format_cell

__all__ = ["ResultTable", "FORMATS", "format_for_path", "read_table", "metadata_path", "export_stem", "ExportError"]

FORMATS = {".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".json": "json"}
_META_TAG = "mscsa-lab-metadata:"
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


class ExportError(UserError, ValueError):
    """A table that cannot be written or read back as asked (unknown format or column, unreadable file)."""


def metadata_path(csv_path: str | Path) -> Path:
    """The JSON file beside a CSV table that holds its title, metadata and notes."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".meta.json")


def export_stem(kind: str, models: Any = (), task: str | None = None, size: Any = None, when: float | None = None) -> str:
    """A file name (without suffix) that says what it holds: ``compare_pvt_v2_b0-pvt_v2_b1_cls_224x224_20261123-1630``.

    models: a name or names (at most three spelled out, then ``+N``); size: (H, W), an int or "HxW";
    when: a time stamp (default now)."""
    import re
    import time

    names = [models] if isinstance(models, str) else [str(m) for m in models or ()]
    clean = [re.sub(r"[^A-Za-z0-9_]+", "-", n).strip("-") for n in names if str(n).strip()]
    model_part = "-".join(clean[:3]) + (f"+{len(clean) - 3}" if len(clean) > 3 else "")
    if isinstance(size, int):
        size = (size, size)
    size_part = size if isinstance(size, str) else (f"{size[0]}x{size[1]}" if size else "")
    task_part = {"classification": "cls", "dense": "dense", "segmentation": "seg"}.get(task or "", task or "")
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(when))
    parts = [kind, model_part, task_part, size_part, stamp]
    return "_".join(part for part in parts if part)


def format_for_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"cannot tell the format of {str(path)!r}: use one of {sorted(FORMATS)}")
    return FORMATS[suffix]


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_unescape(text: str) -> str:
    for raw, escaped in sorted(_LATEX_SPECIALS.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(escaped, raw)
    return text


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn the columns of a parsed table back into numbers where every cell is one ("-" = NaN)."""
    frame = frame.replace("-", float("nan"))
    for column in frame.columns:
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError):
            frame[column] = frame[column].astype(object)
    return frame


@dataclass
class ResultTable:
    title: str
    frame: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The columns a paper's table needs (LaTeX default); None = every column.
    paper_columns: list[str] | None = None
    # The columns a screen shows by default (the terminal, the page); None = the paper's.
    compact_columns: list[str] | None = None

    # ------------------------------------------------------------------ writers
    def to_csv(self) -> str:
        """The table alone (header and rows): what ``pandas.read_csv`` reads back as it is."""
        return self.frame.to_csv(index=False)

    def metadata_json(self) -> str:
        return json.dumps(dict(title=self.title, metadata=self.metadata, notes=self.notes,
                               columns=list(self.frame.columns), paper_columns=self.paper_columns,
                               compact_columns=self.compact_columns), indent=2, default=str)

    def flagged_rows(self) -> list[tuple[int, str]]:
        """(row, why) of the rows a ``Check`` column says are not findings (noise, impossible values)."""
        if "Check" not in self.frame.columns:
            return []
        return [(i, str(check)) for i, check in enumerate(self.frame["Check"])
                if str(check).strip() not in ("ok", "", "nan", "-")]

    def to_markdown(self, digits: int = DEFAULT_DIGITS) -> str:
        columns = list(self.frame.columns)
        flagged = dict(self.flagged_rows())
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---:" if _is_numeric(self.frame[c]) else "---" for c in columns) + "|")
        for index, record in enumerate(self.frame.itertuples(index=False)):
            cells = [format_cell(v, c, digits).replace("|", "\\|") for v, c in zip(record, columns)]
            if index in flagged:
                cells[0] += " †"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if flagged:
            lines += [f"> † not a finding: {self.frame.iloc[i, 0]}: {why}" for i, why in flagged.items()]
            lines.append("")
        lines += [f"> {note}" for note in self.notes]
        lines.append("")
        readable = {k: v for k, v in self.metadata.items() if not isinstance(v, dict)}
        lines += [f"- {key}: {value}" for key, value in readable.items()]
        lines.append(f"<!-- {_META_TAG} {json.dumps(self.metadata, default=str)} -->")
        return "\n".join(lines) + "\n"

    def latex_columns(self, columns: list[str] | None = None) -> list[str]:
        """The columns the LaTeX table keeps: those asked for, else ``paper_columns``, else all."""
        chosen = list(columns) if columns else list(self.paper_columns or self.frame.columns)
        unknown = [c for c in chosen if c not in self.frame.columns]
        if unknown:
            raise ExportError(f"unknown column(s) {unknown}: this table has {list(self.frame.columns)}")
        return chosen

    def to_latex(self, digits: int = DEFAULT_DIGITS, columns: list[str] | None = None) -> str:
        """A booktabs table. More than six columns spans both columns of a two-column paper (``table*``)."""
        columns = self.latex_columns(columns)
        frame = self.frame[columns]
        align = "".join("r" if _is_numeric(frame[c]) else "l" for c in columns)
        environment = "table*" if len(columns) > 6 else "table"
        dropped = [c for c in self.frame.columns if c not in columns]
        lines = [
            f"% {_META_TAG} {json.dumps(self.metadata, default=str)}",
            "% needs \\usepackage{booktabs}",
            *([f"% columns left out (in the CSV/JSON): {', '.join(dropped)}"] if dropped else []),
            f"\\begin{{{environment}}}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{_latex_escape(self.title)}}}",
            f"\\begin{{tabular}}{{@{{}}{align}@{{}}}}",
            "\\toprule",
            " & ".join(_latex_escape(c) for c in columns) + " \\\\",
            "\\midrule",
        ]
        flagged = dict(self.flagged_rows())
        levels = self.frame["Level"].tolist() if "Level" in self.frame.columns else None
        for index, record in enumerate(frame.itertuples(index=False)):
            cells = [_latex_escape(format_cell(v, c, digits)) for v, c in zip(record, columns)]
            if index in flagged:
                cells[0] += "$^\\dagger$"
            if levels is not None and "Component" in columns:  # sub-parts indented under their part
                position = columns.index("Component")
                if str(record[position]) == "total":
                    lines.append("\\midrule")  # the total is not one more part: a rule sets it apart
                elif int(levels[index]) > 0:
                    cells[position] = "\\hspace{" + str(int(levels[index])) + "em}" + cells[position]
            lines.append(" & ".join(cells) + " \\\\")
        lines.append("\\bottomrule")
        if flagged:  # visible under the table, not only in the comments
            why = "; ".join(f"{_latex_escape(str(self.frame.iloc[i, 0]))}: {_latex_escape(w)}" for i, w in flagged.items())
            lines.append(f"\\multicolumn{{{len(columns)}}}{{@{{}}p{{0.95\\linewidth}}}}{{\\footnotesize "
                         f"$^\\dagger$ not a finding: {why}}} \\\\")
        lines.append("\\end{tabular}")
        lines += [f"% note: {note}" for note in self.notes]
        lines.append(f"\\end{{{environment}}}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        records = json.loads(self.frame.to_json(orient="records", double_precision=15))
        return json.dumps(
            dict(title=self.title, metadata=self.metadata, notes=self.notes, columns=list(self.frame.columns),
                 paper_columns=self.paper_columns, compact_columns=self.compact_columns, rows=records),
            indent=2,
            default=str,
        )

    def render(self, fmt: str, digits: int = DEFAULT_DIGITS, columns: list[str] | None = None) -> str:
        """The table as text; ``columns`` applies to LaTeX (the other formats keep every column)."""
        writers = dict(csv=self.to_csv, json=self.to_json,
                       markdown=lambda: self.to_markdown(digits), latex=lambda: self.to_latex(digits, columns))
        if fmt not in writers:
            raise ExportError(f"unknown format {fmt!r}: choose one of {sorted(writers)}")
        return writers[fmt]()

    def write(self, path: str | Path, digits: int = DEFAULT_DIGITS, columns: list[str] | None = None) -> Path:
        """Write in the format named by the file's suffix (.csv .md .tex .json); a CSV gets its
        metadata sidecar ``<name>.csv.meta.json``."""
        path = Path(path)
        text = self.render(format_for_path(path), digits, columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if format_for_path(path) == "csv":
            metadata_path(path).write_text(self.metadata_json(), encoding="utf-8")
        return path


# ---------------------------------------------------------------------- readers
def _read_csv(text: str, path: Path) -> ResultTable:
    frame = pd.read_csv(io.StringIO(text))
    sidecar = metadata_path(path)
    if not sidecar.is_file():  # a CSV without its JSON: the numbers, without title or metadata
        return ResultTable(path.stem, frame)
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    return ResultTable(data.get("title", ""), frame, data.get("metadata", {}), data.get("notes", []),
                       data.get("paper_columns"))


def _metadata_from_comment(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if _META_TAG in line:
            payload = line.split(_META_TAG, 1)[1].strip()
            return json.loads(payload.removesuffix("-->").strip())
    return {}


def _read_markdown(text: str) -> ResultTable:
    lines = text.splitlines()
    title = next((l.lstrip("#").strip() for l in lines if l.startswith("#")), "")
    table_lines = [l for l in lines if l.startswith("|")]
    split = lambda line: [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]  # noqa: E731
    header = split(table_lines[0])
    rows = [split(line) for line in table_lines[2:]]
    for row in rows:  # the mark of a row that is not a finding is explained under the table, not data
        row[0] = row[0].removesuffix(" †")
    notes = [line[2:] for line in lines if line.startswith("> ") and not line.startswith("> † not a finding")]
    frame = _typed(pd.DataFrame(rows, columns=header))
    metadata = _metadata_from_comment(text)
    return ResultTable(title, frame, metadata, notes)


def _read_latex(text: str) -> ResultTable:
    lines = text.splitlines()
    caption = next((l for l in lines if l.startswith("\\caption{")), "\\caption{}")
    title = _latex_unescape(caption[len("\\caption{"):-1])
    start = lines.index("\\toprule")
    mid = lines.index("\\midrule")
    end = lines.index("\\bottomrule")
    split = lambda line: [_latex_unescape(c.strip()) for c in line.removesuffix("\\\\").strip().split(" & ")]  # noqa: E731
    header = split(lines[start + 1])
    rows = [split(re.sub(r"^\\hspace\{\d+em\}", "", line.replace("$^\\dagger$", "", 1)))
            for line in lines[mid + 1:end] if line != "\\midrule"]
    notes = [l[len("% note: "):] for l in lines if l.startswith("% note: ")]
    return ResultTable(title, _typed(pd.DataFrame(rows, columns=header)), _metadata_from_comment(text), notes)


def _read_json(text: str) -> ResultTable:
    data = json.loads(text)
    frame = pd.DataFrame(data["rows"], columns=data["columns"])
    return ResultTable(data.get("title", ""), frame, data.get("metadata", {}), data.get("notes", []),
                       data.get("paper_columns"))


def read_table(path: str | Path) -> ResultTable:
    """Parse a table written by ``ResultTable.write`` back (any of the four formats)."""
    path = Path(path)
    fmt = format_for_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"no table at {str(path)!r}: check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExportError(f"cannot read {str(path)!r} as a table: {error}") from None
    readers = dict(csv=lambda text: _read_csv(text, path), markdown=_read_markdown, latex=_read_latex, json=_read_json)
    try:
        return readers[fmt](text)
    except (ValueError, KeyError, IndexError, json.JSONDecodeError) as error:
        raise ExportError(f"{str(path)!r} is not a table written by MSCSA Lab: {error}") from None
