"""Table-2-style speed: measured :class:`~mmmamba_bench.results.SpeedRow` files beside the paper's Table 2."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..results import SPEED_SCHEMA, SpeedRow
from .inputs import check_numbers, read_row_files
from .paper import PaperSpeedRow, same_model
from .tables import format_path, render_table

if TYPE_CHECKING:
    import pandas as pd

PAPER_DEVICE = "RTX 4090 (paper)"
COLUMNS = ("Model", "Source", "Device", "dtype", "Visual tokens", "Output tokens", "Prefill (s)", "Total (s)",
           "Tokens/s", "Path")
FORMATS = {"Visual tokens": ".0f", "Output tokens": ".0f", "Prefill (s)": ".3f", "Total (s)": ".2f", "Tokens/s": ".2f"}
_NUMBERS = ("visual_tokens", "prompt_tokens", "output_tokens", "prefill_s", "decode_s", "total_s", "tokens_per_s")


def _check(row: SpeedRow) -> str | None:
    return check_numbers(row, _NUMBERS)


def load_speed_rows(files: Iterable[Path]) -> list[SpeedRow]:
    """Every row of the speed files, checked against ``SPEED_SCHEMA``; errors name the file."""
    return read_row_files(files, SPEED_SCHEMA, SpeedRow, check=_check)


def _paper_record(p: PaperSpeedRow) -> dict[str, Any]:
    return {"Model": p.model, "Source": "paper", "Device": PAPER_DEVICE, "dtype": None,
            "Visual tokens": p.visual_tokens, "Output tokens": p.output_tokens, "Prefill (s)": None,
            "Total (s)": p.total_s, "Tokens/s": p.tokens_per_s, "Path": None}


def _measured_record(r: SpeedRow) -> dict[str, Any]:
    return {"Model": r.model, "Source": "measured", "Device": r.device, "dtype": r.dtype,
            "Visual tokens": r.visual_tokens, "Output tokens": r.output_tokens, "Prefill (s)": r.prefill_s,
            "Total (s)": r.total_s, "Tokens/s": r.tokens_per_s, "Path": format_path(r.path)}


def speed_frame(rows: Sequence[SpeedRow], paper: Sequence[PaperSpeedRow]) -> pd.DataFrame:
    """Paper rows in paper order, each followed by the measured rows of the same model; other measured rows last."""
    import pandas as pd

    placed: set[int] = set()
    records: list[dict[str, Any]] = []
    for p in paper:
        records.append(_paper_record(p))
        for i, r in enumerate(rows):
            if i not in placed and same_model(r.model, p.model):
                placed.add(i)
                records.append(_measured_record(r))
    records.extend(_measured_record(r) for i, r in enumerate(rows) if i not in placed)
    return pd.DataFrame(records, columns=list(COLUMNS)).astype(object)


def render_speed(rows: Sequence[SpeedRow], paper: Sequence[PaperSpeedRow]) -> str:
    """Markdown: Table 2 with the measured rows beside the paper's."""
    return (render_table(speed_frame(rows, paper), formats=FORMATS)
            + "\n_Paper rows: arXiv 2502.13145 Table 2 (RTX 4090; one image + \"Describe the image specifically\", "
              "256 output tokens; total = prefill + decode, tokens/s = output tokens / total). The paper gives no "
              "prefill time or dtype (\"-\")._\n")
