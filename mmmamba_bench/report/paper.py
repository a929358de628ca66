"""The mmMamba paper's (arXiv 2502.13145) reported numbers, read from ``reports/paper/`` with typed access.

Files: ``table1.csv`` (general benchmarks), ``table2.csv`` (speed, RTX 4090), ``fig1.yaml`` (only the ratios and
OOM facts the paper states about Fig. 1; no curve points) and ``ablations.csv`` (Tables 3-6).
A ``"-"`` in the paper ("not reported") becomes NaN.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .inputs import ReportInputError

TABLE1_META = ("method", "recipe", "complexity", "params", "trainable_pct")
ABLATION_META = ("table", "factor", "setting")
NOT_REPORTED = "-"


@dataclass(frozen=True)
class PaperTable1Row:
    """One method of Table 1. ``scores`` maps the paper's column names (MME, MMB, ...) to values, NaN if "-"."""

    method: str
    recipe: str
    complexity: str  # "quadratic" | "linear" | "hybrid"
    params: str  # as printed, e.g. "2.7B"
    trainable_pct: float
    scores: Mapping[str, float]


@dataclass(frozen=True)
class PaperSpeedRow:
    """One model of Table 2 (one image + "Describe the image specifically", 256 output tokens, RTX 4090)."""

    model: str
    llm: str
    vision: str | None  # None where the paper prints "-" (encoder-free models)
    params: str
    visual_tokens: int
    output_tokens: int
    tokens_per_s: float
    total_s: float


@dataclass(frozen=True)
class PaperRatio:
    """A Fig.-1 claim: this model vs the reference Transformer at the comparison context."""

    model: str
    kind: str  # "linear" | "hybrid": matched against ProfileRow.kind
    speedup: float  # reference ms/token / this model's ms/token
    memory_saving_pct: float  # 100 * (1 - this model's memory / the reference's)


@dataclass(frozen=True)
class PaperContextStatus:
    model: str
    context: str  # as printed, e.g. "128K"
    status: str  # "oom" | "decodes"


@dataclass(frozen=True)
class PaperFig1:
    """Everything the paper states in numbers about Fig. 1."""

    source: str
    device: str
    reference_model: str
    comparison_context: str  # e.g. "103K"
    ratios: tuple[PaperRatio, ...]
    context_status: tuple[PaperContextStatus, ...]
    notes: tuple[str, ...] = ()

    @property
    def comparison_tokens(self) -> int:
        """The comparison context in tokens (K = 1024, the unit of the 1K..128K axis)."""
        return parse_context_label(self.comparison_context)

    def ratio_for_kind(self, kind: str) -> PaperRatio | None:
        return next((r for r in self.ratios if r.kind == kind), None)


@dataclass(frozen=True)
class AblationRow:
    """One row of Tables 3-6; ``scores`` has MME, POPE, TQA, SQA-I (NaN where the paper has no number)."""

    table: int
    factor: str
    setting: str
    scores: Mapping[str, float]


@dataclass(frozen=True)
class PaperNumbers:
    table1: tuple[PaperTable1Row, ...]
    table2: tuple[PaperSpeedRow, ...]
    fig1: PaperFig1
    ablations: tuple[AblationRow, ...] = field(default=())

    def table1_row(self, method: str) -> PaperTable1Row | None:
        return next((r for r in self.table1 if r.method == method), None)


def default_paper_dir() -> Path:
    """``reports/paper/`` (see :mod:`mmmamba_bench.assets`: a checkout's folder or the installed package data)."""
    from mmmamba_bench.assets import paper_dir

    return paper_dir()


def parse_number(text: str) -> float:
    """A paper cell as float; ``"-"`` (not reported) or an empty cell -> NaN."""
    text = text.strip()
    if text in (NOT_REPORTED, ""):
        return math.nan
    return float(text)


def parse_context_label(label: str) -> int:
    """``"103K"`` -> 105472 tokens (K = 1024); a plain integer string is taken as tokens."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", label)
    if not match:
        raise ValueError(f"not a context length: {label!r}")
    value = float(match.group(1))
    return round(value * 1024) if match.group(2) else int(value)


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise ReportInputError(f"paper numbers file not found: {path}") from None


def score_columns(path: Path, meta: tuple[str, ...]) -> list[str]:
    """The score column names of a paper CSV (everything after the metadata columns), in file order."""
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    if tuple(header[: len(meta)]) != meta:
        raise ReportInputError(f"{path}: expected leading columns {list(meta)}, found {header[: len(meta)]}")
    return header[len(meta):]


def load_table1(paper_dir: Path | None = None) -> tuple[PaperTable1Row, ...]:
    path = (paper_dir or default_paper_dir()) / "table1.csv"
    raw = _read_csv(path)
    cols = score_columns(path, TABLE1_META)
    return tuple(
        PaperTable1Row(method=r["method"], recipe=r["recipe"], complexity=r["complexity"], params=r["params"],
                       trainable_pct=parse_number(r["trainable_pct"]),
                       scores={c: parse_number(r[c]) for c in cols})
        for r in raw)


def load_table2(paper_dir: Path | None = None) -> tuple[PaperSpeedRow, ...]:
    raw = _read_csv((paper_dir or default_paper_dir()) / "table2.csv")
    return tuple(
        PaperSpeedRow(model=r["model"], llm=r["llm"], vision=None if r["vision"] == NOT_REPORTED else r["vision"],
                      params=r["params"], visual_tokens=int(r["visual_tokens"]),
                      output_tokens=int(r["output_tokens"]), tokens_per_s=parse_number(r["tokens_per_s"]),
                      total_s=parse_number(r["total_s"]))
        for r in raw)


def load_ablations(paper_dir: Path | None = None) -> tuple[AblationRow, ...]:
    path = (paper_dir or default_paper_dir()) / "ablations.csv"
    raw = _read_csv(path)
    cols = score_columns(path, ABLATION_META)
    return tuple(AblationRow(table=int(r["table"]), factor=r["factor"], setting=r["setting"],
                             scores={c: parse_number(r[c]) for c in cols})
                 for r in raw)


def load_fig1(paper_dir: Path | None = None) -> PaperFig1:
    import yaml

    path = (paper_dir or default_paper_dir()) / "fig1.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ReportInputError(f"paper numbers file not found: {path}") from None
    return PaperFig1(
        source=data["source"], device=data["device"], reference_model=data["reference_model"],
        comparison_context=str(data["comparison_context"]),
        ratios=tuple(PaperRatio(model=r["model"], kind=r["kind"], speedup=float(r["speedup"]),
                                memory_saving_pct=float(r["memory_saving_pct"])) for r in data["ratios"]),
        context_status=tuple(PaperContextStatus(model=s["model"], context=str(s["context"]), status=s["status"])
                             for s in data.get("context_status", [])),
        notes=tuple(data.get("notes", [])))


def load_paper(paper_dir: Path | None = None) -> PaperNumbers:
    """All of the paper's numbers; ``paper_dir`` defaults to :func:`default_paper_dir`."""
    return PaperNumbers(table1=load_table1(paper_dir), table2=load_table2(paper_dir), fig1=load_fig1(paper_dir),
                        ablations=load_ablations(paper_dir))


def same_model(a: str, b: str) -> bool:
    """Case- and punctuation-insensitive name match: ``"mmmamba_linear"`` matches the paper's ``"mmMamba-linear"``."""
    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    return norm(a) == norm(b)
