"""Reading the profile / speed row files, and the one error type for bad inputs (its message names the file)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from ..results import read_rows

RowT = TypeVar("RowT")


class ReportInputError(ValueError):
    """An input file (lmms-eval results, profile or speed rows) is missing, not JSON, or has the wrong shape."""


def read_row_files(files: Iterable[Path], schema: str, cls: type[RowT],
                   check: Callable[[RowT], str | None] | None = None) -> list[RowT]:
    """All rows of ``files`` (written by :func:`mmmamba_bench.results.write_rows`), in file order.

    check: returns a description of what is wrong with a row (None if fine); a problem raises
    :class:`ReportInputError` naming the file and the row.
    """
    rows: list[RowT] = []
    for path in files:
        try:
            _meta, file_rows = read_rows(path, schema, cls)
        except (ValueError, FileNotFoundError) as exc:
            raise ReportInputError(str(exc)) from exc
        except (TypeError, AttributeError) as exc:  # e.g. "rows" is not a list of objects
            raise ReportInputError(f"{path}: malformed rows ({exc})") from exc
        for i, row in enumerate(file_rows):
            problem = check(row) if check else None
            if problem:
                raise ReportInputError(f"{path}: row {i}: {problem}")
        rows.extend(file_rows)
    return rows


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numbers(row: object, required: Iterable[str], optional: Iterable[str] = ()) -> str | None:
    """A problem description if a required field is not a number or an optional one is neither None nor a number."""
    for name in required:
        if not is_number(getattr(row, name)):
            return f"{name} must be a number, found {getattr(row, name)!r}"
    for name in optional:
        value = getattr(row, name)
        if value is not None and not is_number(value):
            return f"{name} must be a number or null, found {value!r}"
    return None
