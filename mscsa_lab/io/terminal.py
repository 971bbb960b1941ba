"""A result table as a terminal reads it: the compact columns (every one with ``wide``), numbers by the one
rule, sub-components indented under their parent, columns aligned; no metadata (that is in the files)."""
from __future__ import annotations

from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.numbers import DEFAULT_DIGITS, format_cell

__all__ = ["terminal_table", "compact_columns"]

# Columns that always stay in the compact view when a table has them: they say whether a row is a finding.
_ALWAYS = ("Check",)


def compact_columns(table: ResultTable) -> list[str]:
    """The table's own compact set (``compact_columns``, else ``paper_columns``), plus the columns that
    qualify a row, in the table's order."""
    chosen = set(table.compact_columns or table.paper_columns or table.frame.columns)
    chosen.update(c for c in _ALWAYS if c in table.frame.columns)
    return [c for c in table.frame.columns if c in chosen]


def terminal_table(table: ResultTable, digits: int = DEFAULT_DIGITS, wide: bool = False) -> str:
    columns = [c for c in (table.frame.columns if wide else compact_columns(table)) if c in table.frame.columns]
    levels = table.frame["Level"].tolist() if "Level" in table.frame.columns else None
    rows = []
    for index, record in enumerate(table.frame[columns].itertuples(index=False)):
        cells = [format_cell(value, column, digits) for value, column in zip(record, columns)]
        if levels is not None and "Component" in columns:
            position = columns.index("Component")
            cells[position] = "  " * int(levels[index]) + cells[position]
        rows.append(cells)
    widths = [max([len(str(c))] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    numeric = [all(_looks_numeric(r[i]) for r in rows) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if right else cell.ljust(width)
                         for cell, width, right in zip(cells, widths, numeric)).rstrip()

    out = [table.title, line([str(c) for c in columns]), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    hidden = len(table.frame.columns) - len(columns)
    if hidden > 0:
        out.append(f"({hidden} more column{'s' if hidden != 1 else ''} with --wide, and in every file written)")
    return "\n".join(out) + "\n"


def _looks_numeric(text: str) -> bool:
    text = text.strip().replace(",", "")
    if text in ("", "-", "nan"):
        return True
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True
