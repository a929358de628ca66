"""Table-2-style speed: measured :class:`~mmmamba_bench.results.SpeedRow` files beside the paper's Table 2."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..results import SPEED_SCHEMA, SpeedRow, read_rows
from .inputs import ReportInputError, check_numbers, read_row_files
from .ordering import paper_row_of, render_ordering, variant_of
from .paper import PaperSpeedRow
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
    variant = r.extra.get("variant")
    return {"Model": r.model, "Source": f"measured: {variant}" if variant else "measured", "Device": r.device,
            "dtype": r.dtype,
            "Visual tokens": r.visual_tokens, "Output tokens": r.output_tokens, "Prefill (s)": r.prefill_s,
            "Total (s)": r.total_s, "Tokens/s": r.tokens_per_s, "Path": format_path(r.path)}


def speed_frame(rows: Sequence[SpeedRow], paper: Sequence[PaperSpeedRow]) -> pd.DataFrame:
    """Paper rows in paper order, each followed by the measured rows of the same model; other measured rows last."""
    import pandas as pd

    placed: set[int] = set()
    records: list[dict[str, Any]] = []
    for p in paper:
        records.append(_paper_record(p))
        mine = [i for i, r in enumerate(rows) if i not in placed and paper_row_of(r, paper) == p.model]
        for i in sorted(mine, key=lambda i: variant_of(rows[i]) != "release"):  # release-style first
            placed.add(i)
            records.append(_measured_record(rows[i]))
    records.extend(_measured_record(r) for i, r in enumerate(rows) if i not in placed)
    return pd.DataFrame(records, columns=list(COLUMNS)).astype(object)


def load_not_measured(files: Iterable[Path]) -> list[dict[str, str]]:
    """The jobs each speed file lists as not measured (``meta["not_measured"]``), with their file."""
    out = []
    for path in files:
        try:
            meta, _ = read_rows(path, SPEED_SCHEMA, SpeedRow)
        except (ValueError, FileNotFoundError) as exc:
            raise ReportInputError(str(exc)) from exc
        out.extend({**g, "file": str(path)} for g in meta.get("not_measured") or [])
    return out


def _gaps(rows: Sequence[SpeedRow], not_measured: Sequence[dict[str, str]]) -> str:
    """Variants that did not run, and why (a release row's ``best_path`` note, the files' ``not_measured``)."""
    lines = [f"- {r.model} (best): {r.extra['best_path']}" for r in rows if r.extra.get("best_path")]
    lines += [f"- {g['model']} ({g['variant']}): {g['reason']}" for g in not_measured]
    return ("Not measured:\n" + "\n".join(dict.fromkeys(lines)) + "\n") if lines else ""


def render_speed(rows: Sequence[SpeedRow], paper: Sequence[PaperSpeedRow]) -> str:
    """Markdown: Table 2 with the measured rows beside the paper's."""
    devices = ", ".join(dict.fromkeys(r.device for r in rows))
    return (render_table(speed_frame(rows, paper), formats=FORMATS)
            + "\n_Paper rows: arXiv 2502.13145 Table 2 (RTX 4090; one image + \"Describe the image specifically\", "
              "256 output tokens; total = prefill + decode, tokens/s = output tokens / total). The paper gives no "
              f"prefill time or dtype (\"-\"). Measured rows: {devices}; \"release\" = as the model's release "
              "generates (baselines: transformers generate with its default cache; ours: the paper-faithful eager "
              "decode), \"best\" = the best our tooling makes of it (baselines: a fixed-address cache and the "
              "library's one-token step as a CUDA graph; ours: our decode path). Baselines run random weights of "
              "the published shapes; Path says what ran._\n")


def render_speed_notes(rows: Sequence[SpeedRow], paper: Sequence[PaperSpeedRow],
                       not_measured: Sequence[dict[str, str]] = ()) -> str:
    """Markdown under Table 2: what did not run and why, and the paper's ordering checked on the rows."""
    return _gaps(rows, not_measured) + "\n" + render_ordering(rows, paper)
