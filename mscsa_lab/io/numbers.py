"""One rule for printing numbers, used by every table the project writes or shows.

A figure in a paper carries the digits its measurement supports, not the digits a float has:

- whole-number columns (counts, batch, rounds, levels) print as integers;
- percentages (a ``%`` in the column name) print with one decimal (0.1 points is the finest
  difference any of our measurements resolves);
- throughput (``FPS`` or ``/s`` in the column name) prints as an integer from 10 up;
- everything else prints with ``digits`` significant figures (default 3), never in scientific
  notation, and a number with more integer digits than that keeps them all (3797, not 3.8e3).

So a CSV keeps full precision for tools, and Markdown, LaTeX and the app show the same text for
the same value whichever command produced it.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import pandas as pd

__all__ = ["DEFAULT_DIGITS", "format_number", "format_cell", "readable_frame", "human_count", "human_bytes"]

DEFAULT_DIGITS = 3


def _is_percent(column: str) -> bool:
    return "%" in column


def _is_throughput(column: str) -> bool:
    return "FPS" in column or "/s" in column


def format_number(value: float, column: str = "", digits: int = DEFAULT_DIGITS) -> str:
    """``value`` as text under the rule above (``column`` is the column's name)."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if _is_percent(column):
        text = f"{value:.1f}"
        return "0.0" if text == "-0.0" else text
    if _is_throughput(column) and abs(value) >= 10:
        return f"{value:.0f}"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    text = f"{value:.{decimals}f}"
    # Rounding can carry into a new digit (9.996 -> 10.00): one decimal fewer keeps the count right.
    if decimals > 0 and len(text.lstrip("-").replace(".", "").lstrip("0")) > digits:
        text = f"{value:.{decimals - 1}f}"
    return text


def format_cell(value: Any, column: str = "", digits: int = DEFAULT_DIGITS) -> str:
    """Any table cell: numbers by ``format_number``, missing values as "-", the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Real):
        return format_number(value, column, digits)
    return str(value)


def readable_frame(frame: pd.DataFrame, digits: int = DEFAULT_DIGITS) -> pd.DataFrame:
    """A copy of ``frame`` with every cell as the text the rule gives (for the app's tables)."""
    out = frame.copy().astype(object)
    for column in frame.columns:
        out[column] = [format_cell(v.item() if hasattr(v, "item") else v, str(column), digits) for v in frame[column]]
    return out


def human_count(count: float) -> str:
    """13496000 -> '13.5 M' (parameters, FLOPs): k, M, G, T with three significant figures."""
    count = float(count)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{format_number(count / scale)} {suffix}"
    return format_number(count)


def human_bytes(size: float) -> str:
    """Bytes in binary units: 1536 -> '1.50 KiB'."""
    size = float(size)
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(size) >= scale:
            return f"{format_number(size / scale)} {suffix}"
    return f"{size:.0f} B"
