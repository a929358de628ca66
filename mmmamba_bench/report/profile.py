"""Fig.-1-style data: :class:`~mmmamba_bench.results.ProfileRow` files grouped into series, their table, and the
speed-up / memory-saving ratios of each model vs the Transformer next to the paper's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..results import PROFILE_SCHEMA, ProfileRow
from .inputs import check_numbers, read_row_files
from .paper import PaperFig1
from .tables import format_cell, format_path, markdown_table, render_table

if TYPE_CHECKING:
    import pandas as pd

GIB = 2**30
STATUSES = ("ok", "oom", "error")
TRANSFORMER = "transformer"
_OPTIONAL_NUMBERS = ("prefill_s", "decode_ms_per_token", "tokens_per_s", "peak_prefill_bytes", "peak_decode_bytes",
                     "nvml_used_bytes", "memory_cap_bytes", "bandwidth_bytes_per_s", "bytes_per_step", "floor_ms",
                     "ratio_to_floor")


@dataclass(frozen=True)
class SeriesKey:
    """One line of the plots: a model under one baseline on one device / dtype."""

    model: str
    baseline: str  # "optimized" | "paper"
    device: str
    dtype: str

    def label(self, with_device: bool = False) -> str:
        """``"HoVLE (paper baseline)"`` / ``"HoVLE (optimized)"``, plus device and dtype when asked."""
        base = "paper baseline" if self.baseline == "paper" else self.baseline
        where = f", {self.device} {self.dtype}" if with_device else ""
        return f"{self.model} ({base}{where})"


def _check(row: ProfileRow) -> str | None:
    if isinstance(row.context, bool) or not isinstance(row.context, int) or row.context <= 0:
        return f"context must be a positive integer, found {row.context!r}"
    if row.status not in STATUSES:
        return f"status must be one of {STATUSES}, found {row.status!r}"
    return check_numbers(row, (), _OPTIONAL_NUMBERS)


def load_profile_rows(files: Iterable[Path]) -> list[ProfileRow]:
    """Every row of the profile files, checked against ``PROFILE_SCHEMA``; errors name the file and row."""
    return read_row_files(files, PROFILE_SCHEMA, ProfileRow, check=_check)


def series_key(row: ProfileRow) -> SeriesKey:
    return SeriesKey(row.model, row.baseline, row.device, row.dtype)


def group_series(rows: Iterable[ProfileRow]) -> dict[SeriesKey, list[ProfileRow]]:
    """Rows grouped by :class:`SeriesKey` (in order of first appearance), each sorted by context."""
    groups: dict[SeriesKey, list[ProfileRow]] = {}
    for row in rows:
        groups.setdefault(series_key(row), []).append(row)
    return {k: sorted(v, key=lambda r: r.context) for k, v in groups.items()}


def mixed_devices(rows: Sequence[ProfileRow]) -> bool:
    return len({(r.device, r.dtype) for r in rows}) > 1


def peak_bytes(row: ProfileRow) -> int | None:
    """The larger of the prefill and decode allocator peaks (the one that decides whether a context fits)."""
    peaks = [b for b in (row.peak_prefill_bytes, row.peak_decode_bytes) if b is not None]
    return max(peaks) if peaks else None


def ratio_to_floor(row: ProfileRow) -> float | None:
    if row.ratio_to_floor is not None:
        return row.ratio_to_floor
    if row.decode_ms_per_token is not None and row.floor_ms:
        return row.decode_ms_per_token / row.floor_ms
    return None


def context_label(tokens: int) -> str:
    """1024 -> ``"1K"``, 105472 -> ``"103K"``, 1536 -> ``"1.5K"``, 512 -> ``"512"`` (K = 1024 tokens)."""
    return f"{tokens / 1024:g}K" if tokens >= 1024 else str(tokens)


def device_caption(rows: Sequence[ProfileRow]) -> str:
    """``"NVIDIA H100, bfloat16"``; ``"mixed devices: A, B; dtypes: ..."`` when rows differ."""
    devices = sorted({r.device for r in rows})
    dtypes = sorted({r.dtype for r in rows})
    if len(devices) == 1:
        dtype = dtypes[0] if len(dtypes) == 1 else "mixed dtypes: " + ", ".join(dtypes)
        return f"{devices[0]}, {dtype}"
    return f"mixed devices: {', '.join(devices)}; dtypes: {', '.join(dtypes)}"


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def profile_frame(rows: Sequence[ProfileRow]) -> pd.DataFrame:
    """One line per row: series, context, ms/token, floor, ratio, peaks (GiB), status and the code path that ran."""
    import pandas as pd

    with_device = mixed_devices(rows)
    records = []
    for key, group in group_series(rows).items():
        for r in group:
            records.append({"series": key.label(with_device), "kind": r.kind, "context": context_label(r.context),
                            "tokens": r.context, "ms/token": r.decode_ms_per_token, "floor ms": r.floor_ms,
                            "x floor": ratio_to_floor(r), "peak prefill GiB": _gib(r.peak_prefill_bytes),
                            "peak decode GiB": _gib(r.peak_decode_bytes), "status": r.status,
                            "path": format_path(r.path)})
    return pd.DataFrame(records).astype(object)


PROFILE_FORMATS = {"tokens": ".0f", "ms/token": ".2f", "floor ms": ".2f", "x floor": ".1f",
                   "peak prefill GiB": ".2f", "peak decode GiB": ".2f"}


def render_profile_table(rows: Sequence[ProfileRow]) -> str:
    return render_table(profile_frame(rows), formats=PROFILE_FORMATS)


@dataclass(frozen=True)
class RatioRow:
    """A model vs a Transformer series at one context, with the paper's claim for that kind of model."""

    model: SeriesKey
    reference: SeriesKey
    context: int
    speedup: float | None  # reference ms/token / model ms/token
    memory_saving_pct: float | None  # 100 * (1 - model peak / reference peak)
    paper_speedup: float | None
    paper_memory_saving_pct: float | None


def _ok_by_context(rows: Sequence[ProfileRow]) -> dict[int, ProfileRow]:
    return {r.context: r for r in rows if r.status == "ok" and r.decode_ms_per_token is not None}


def _nearest(contexts: Iterable[int], target: int) -> int | None:
    contexts = list(contexts)
    return min(contexts, key=lambda c: (abs(c - target), c)) if contexts else None


def compare_to_transformer(rows: Sequence[ProfileRow], fig1: PaperFig1) -> list[RatioRow]:
    """For each non-Transformer series and each Transformer series on the same device and dtype: the ratios at the
    paper's comparison context (103K), or the nearest context both measured successfully."""
    groups = group_series(rows)
    kinds = {k: g[0].kind for k, g in groups.items()}
    refs = [k for k in groups if kinds[k] == TRANSFORMER]
    out = []
    for key, group in groups.items():
        if kinds[key] == TRANSFORMER:
            continue
        claim = fig1.ratio_for_kind(kinds[key])
        for ref in refs:
            if (ref.device, ref.dtype) != (key.device, key.dtype):
                continue
            mine, theirs = _ok_by_context(group), _ok_by_context(groups[ref])
            context = _nearest(set(mine) & set(theirs), fig1.comparison_tokens)
            if context is None:
                continue
            m, t = mine[context], theirs[context]
            pm, pt = peak_bytes(m), peak_bytes(t)
            out.append(RatioRow(
                model=key, reference=ref, context=context,
                speedup=t.decode_ms_per_token / m.decode_ms_per_token if m.decode_ms_per_token else None,
                memory_saving_pct=100.0 * (1.0 - pm / pt) if pm is not None and pt else None,
                paper_speedup=claim.speedup if claim else None,
                paper_memory_saving_pct=claim.memory_saving_pct if claim else None))
    return out


def render_ratios(ratios: Sequence[RatioRow], fig1: PaperFig1, with_device: bool = False) -> str:
    """Markdown table of :func:`compare_to_transformer` beside the paper's Fig.-1 ratios."""
    headers = ["model", "vs", "context", "speed-up", "paper speed-up", "memory saving %", "paper memory saving %"]
    body = [[r.model.label(with_device), r.reference.label(with_device), context_label(r.context),
             format_cell(r.speedup, ".1f") + ("x" if r.speedup is not None else ""),
             format_cell(r.paper_speedup, ".1f") + ("x" if r.paper_speedup is not None else ""),
             format_cell(r.memory_saving_pct, ".1f"), format_cell(r.paper_memory_saving_pct, ".1f")]
            for r in ratios]
    note = (f"\n_Paper: {fig1.source}, {fig1.device}, vs {fig1.reference_model} at {fig1.comparison_context}. "
            f"Measured: at {fig1.comparison_context} or the nearest context both series decoded; memory = the larger "
            "of the prefill and decode allocator peaks._\n")
    return markdown_table(headers, body, ["l", "l", "r", "r", "r", "r", "r"]) + note


def paper_context_notes(fig1: PaperFig1) -> str:
    """The paper's OOM / still-decodes statements as a sentence."""
    parts = [f"{s.model} {'runs out of memory' if s.status == 'oom' else 'still decodes'} at {s.context}"
             for s in fig1.context_status]
    return "Paper: " + "; ".join(parts) + (". " + " ".join(fig1.notes) if fig1.notes else ".")

