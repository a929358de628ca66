"""A tiny markdown-table formatter (no ``tabulate`` dependency) and cell formatting.

Missing values (None, NaN) are always rendered as ``"-"``, never as 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

MISSING = "-"


def is_missing(value: Any) -> bool:
    """True for None and float NaN (pandas' missing marker in float columns)."""
    if value is None:
        return True
    try:
        return isinstance(value, numbers.Real) and math.isnan(value)
    except TypeError:
        return False


def is_real(value: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def format_cell(value: Any, fmt: str | None = None) -> str:
    """Format one table cell: ``"-"`` for missing values, ``fmt`` (e.g. ``".1f"``) for numbers, ``str`` otherwise."""
    if is_missing(value):
        return MISSING
    if fmt and is_real(value):
        return format(value, fmt)
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """Render a GitHub-flavoured markdown table from already formatted cells.

    align: one of ``"l"``, ``"r"``, ``"c"`` per column (default: left for all). Pipes in cells are escaped.
    """
    n = len(headers)
    align = list(align) if align is not None else ["l"] * n
    if len(align) != n:
        raise ValueError(f"align has {len(align)} entries for {n} columns")
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_escape(str(h)) for h in headers) + " |",
             "|" + "|".join(marks[a] for a in align) + "|"]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells for {n} columns")
        lines.append("| " + " | ".join(_escape(str(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


def render_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None, default_format: str | None = None,
                 index: bool = False) -> str:
    """Render a pandas DataFrame as a markdown table.

    formats: per-column format specs (e.g. ``{"MME": ".1f"}``); ``default_format`` applies to other numeric cells.
    Numeric columns are right-aligned. Missing cells (None / NaN) become ``"-"``.
    """
    formats = dict(formats or {})
    data = frame.reset_index() if index else frame
    headers = [str(c) for c in data.columns]
    numeric = [_is_numeric_column(data[c]) for c in data.columns]
    rows = []
    for record in data.itertuples(index=False, name=None):
        rows.append([format_cell(v, formats.get(str(c), default_format)) for c, v in zip(data.columns, record)])
    return markdown_table(headers, rows, ["r" if num else "l" for num in numeric])


def _is_numeric_column(series: pd.Series) -> bool:
    """Right-align numbers: a numeric dtype (even if all NaN) or an object column whose values are all numbers."""
    from pandas.api.types import is_numeric_dtype

    values = [v for v in series.tolist() if not is_missing(v)]
    if not values:
        return is_numeric_dtype(series.dtype)
    return all(is_real(v) for v in values)


def format_path(path: Mapping[str, str] | None) -> str:
    """A row's implementation record as ``"attention=sdpa, graph=cuda"`` (``"-"`` if empty)."""
    if not path:
        return MISSING
    return ", ".join(f"{k}={v}" for k, v in path.items())
