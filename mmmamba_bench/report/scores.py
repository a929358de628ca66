"""Table-1-style scores read from lmms-eval 0.7.3 results files.

lmms-eval writes ``<output_path>/<model>/<YYYYmmdd_HHMMSS>_results.json`` holding ``results[task]`` with
``"<metric>,none"`` and ``"<metric>_stderr,none"`` entries, ``config`` with ``model`` and ``model_args`` and ``date``
(the same timestamp as the file name). Scores are looked up only through :data:`mmmamba_bench.benchmarks.TABLE1`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..benchmarks import MINI_CHANCE, TABLE1, Column, Headline
from .inputs import ReportInputError
from .paper import PaperTable1Row, same_model
from .tables import render_table

if TYPE_CHECKING:
    import pandas as pd

RESULTS_GLOB = "*_results.json"
FILTER_SUFFIX = ",none"  # lmms-eval's default filter name, appended to every metric key
SUITES = ("real", "mini")
SCORE_FORMAT = ".1f"
CHANCE_ROW = "chance (uniform guess)"
_STAMP = re.compile(r"(\d{8}_\d{6})")
_STAMP_FORMAT = "%Y%m%d_%H%M%S"


@dataclass(frozen=True)
class ResultsFile:
    """One lmms-eval aggregated results file."""

    path: Path
    label: str  # the model label (see :func:`model_label`)
    timestamp: float  # when the run was saved (file-name stamp, else ``date``, else mtime); larger = newer
    results: Mapping[str, Mapping[str, Any]]  # task -> {"<metric>,none": value, ...}


@dataclass
class ModelScores:
    """Per-task metrics of one model label, each task taken from the newest file that evaluated it."""

    label: str
    metrics: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # task -> lmms-eval metric dict
    sources: dict[str, Path] = field(default_factory=dict)  # task -> results file it came from


def find_results_files(dirs: Iterable[Path]) -> list[Path]:
    """All ``*_results.json`` files under ``dirs`` (recursively); a file path is taken as is."""
    found: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.is_file():
            found.add(d)
        elif d.is_dir():
            found.update(p for p in d.rglob(RESULTS_GLOB) if p.is_file())
        else:
            raise ReportInputError(f"results path not found: {d}")
    return sorted(found)


def parse_model_args(model_args: str | Mapping[str, Any] | None) -> dict[str, str]:
    """``"pretrained=/m/x,label=lin"`` -> ``{"pretrained": "/m/x", "label": "lin"}``; a dict is passed through."""
    if not model_args:
        return {}
    if isinstance(model_args, Mapping):
        return {str(k): str(v) for k, v in model_args.items()}
    out: dict[str, str] = {}
    for part in str(model_args).split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def model_label(config: Mapping[str, Any] | None, fallback: str) -> str:
    """The ``label=`` model argument, else the base name of ``pretrained=``, else ``config.model``, else fallback."""
    config = config or {}
    args = parse_model_args(config.get("model_args"))
    if args.get("label"):
        return args["label"]
    if args.get("pretrained"):
        return Path(args["pretrained"].rstrip("/")).name or args["pretrained"]
    if config.get("model"):
        return str(config["model"])
    return fallback


def _timestamp(path: Path, data: Mapping[str, Any]) -> float:
    for text in (path.name, data.get("date")):
        if isinstance(text, str) and (m := _STAMP.search(text)):
            return datetime.strptime(m.group(1), _STAMP_FORMAT).timestamp()
    if isinstance(data.get("date"), (int, float)):
        return float(data["date"])
    return path.stat().st_mtime


def load_results_file(path: Path) -> ResultsFile:
    """Read one results file; errors name the file (bad JSON, not an object, missing or malformed ``results``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportInputError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if "results" not in data:
        raise ReportInputError(f"{path}: no 'results' key (not an lmms-eval results file?)")
    results = data["results"]
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise ReportInputError(f"{path}: 'results' must map task names to metric objects")
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    return ResultsFile(path=path, label=recorded_label(data) or model_label(config, fallback=path.parent.name),
                       timestamp=_timestamp(path, data), results=results)


def recorded_label(data: Mapping[str, Any]) -> str | None:
    """The label ``mmmamba-bench eval`` recorded (its ``"mmmamba_bench"`` key); a baseline evaluated by lmms-eval's
    own model has no ``label=`` model argument, so this is where its card name is."""
    from ..eval.common import RESULTS_KEY

    record = data.get(RESULTS_KEY)
    model = record.get("model") if isinstance(record, Mapping) else None
    label = model.get("label") if isinstance(model, Mapping) else None
    return label if isinstance(label, str) and label else None


def table1_row_of(label: str, paper: Sequence[PaperTable1Row]) -> str | None:
    """The Table-1 row a measured label stands for: its model card's ``paper_row`` (``cobra-3.5b`` -> Cobra), else a
    paper row of the same name."""
    from ..cards import find_card

    card = find_card(label)
    if card is not None and card.paper_row:
        return card.paper_row
    return next((p.method for p in paper if same_model(label, p.method)), None)


def merge_results(files: Iterable[ResultsFile]) -> dict[str, ModelScores]:
    """Group files by label; for each task the newest file wins (runs may evaluate tasks separately)."""
    merged: dict[str, ModelScores] = {}
    for f in sorted(files, key=lambda f: (f.timestamp, str(f.path))):
        scores = merged.setdefault(f.label, ModelScores(f.label))
        for task, metrics in f.results.items():
            scores.metrics[task] = metrics
            scores.sources[task] = f.path
    return dict(sorted(merged.items()))


def load_scores(dirs: Iterable[Path]) -> dict[str, ModelScores]:
    """Find, read and merge every results file under ``dirs``."""
    return merge_results(load_results_file(p) for p in find_results_files(dirs))


class MetricValueError(ValueError):
    """A headline metric is present but is not a finite number (a failed or hand-edited run)."""

    def __init__(self, task: str, metric: str, value: Any):
        self.task = task
        super().__init__(f"task {task!r}: metric {metric + FILTER_SUFFIX!r} is {value!r}, not a finite number")


def _metric(metrics: Mapping[str, Mapping[str, Any]], task: str, metric: str) -> float | None:
    """The value, None when the task or metric is absent (not evaluated); a present non-number is an error."""
    task_metrics = metrics.get(task, {})
    if metric + FILTER_SUFFIX not in task_metrics:
        return None
    value = task_metrics[metric + FILTER_SUFFIX]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetricValueError(task, metric, value)
    return float(value)


def headline_value(metrics: Mapping[str, Mapping[str, Any]], headline: Headline) -> float | None:
    """One headline number in the paper's units, or None if any task or metric it needs is missing."""
    values = [_metric(metrics, t, headline.metric) for t in headline.tasks]
    if not values or any(v is None for v in values):
        return None
    if headline.reduce == "single":
        if len(values) != 1:
            raise ValueError(f"headline {headline.metric}: reduce='single' needs one task, got {headline.tasks}")
        value = values[0]
    elif headline.reduce == "mean":
        value = sum(values) / len(values)
    elif headline.reduce == "sum":
        value = sum(values)
    else:
        raise ValueError(f"headline {headline.metric}: unknown reduce {headline.reduce!r}")
    return value * headline.scale


def suite_columns(suite: str) -> list[tuple[Column, Headline]]:
    """The Table-1 columns that have a headline in ``suite`` ("real" or "mini"), with that headline."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    return [(c, getattr(c, suite)) for c in TABLE1 if getattr(c, suite) is not None]


def score_frame(scores: Mapping[str, ModelScores], suite: str) -> pd.DataFrame:
    """One row per label with at least one value, one float column per Table-1 column of ``suite`` (NaN = missing)."""
    import pandas as pd

    cols = suite_columns(suite)
    records = {}
    for label, s in scores.items():
        try:
            row = {c.name: headline_value(s.metrics, h) for c, h in cols}
        except MetricValueError as exc:
            raise ReportInputError(f"{s.sources.get(exc.task, label)}: {exc}") from None
        if any(v is not None for v in row.values()):
            records[label] = row
    frame = pd.DataFrame.from_dict(records, orient="index", columns=[c.name for c, _ in cols], dtype=float)
    frame.index.name = "model"
    return frame


def describe_headline(headline: Headline) -> str:
    """E.g. ``"mean of pope_adv, pope_pop, pope_random: pope_f1_score x100"``."""
    tasks = ", ".join(headline.tasks)
    text = f"{tasks}: {headline.metric}" if headline.reduce == "single" else f"{headline.reduce} of {tasks}: {headline.metric}"
    return text + (f" x{headline.scale:g}" if headline.scale != 1 else "")


def table1_frame(measured: pd.DataFrame, paper: Sequence[PaperTable1Row]) -> pd.DataFrame:
    """Paper rows in paper order, each followed by the measured rows of the same model; other measured rows last."""
    import pandas as pd

    score_cols = [c.name for c, _ in suite_columns("real")]
    placed: set[str] = set()
    rows: list[dict[str, Any]] = []

    def measured_row(label: str) -> dict[str, Any]:
        placed.add(label)
        return {"Method": label, "Source": "measured", "Complexity": None, "Params": None,
                **{c: measured.at[label, c] for c in score_cols}}

    for p in paper:
        rows.append({"Method": p.method, "Source": "paper", "Complexity": p.complexity, "Params": p.params,
                     **{c: p.scores.get(c, math.nan) for c in score_cols}})
        rows.extend(measured_row(label) for label in measured.index
                    if label not in placed and table1_row_of(label, paper) == p.method)
    rows.extend(measured_row(label) for label in measured.index if label not in placed)
    return pd.DataFrame(rows, columns=["Method", "Source", "Complexity", "Params", *score_cols])


def render_table1(scores: Mapping[str, ModelScores], paper: Sequence[PaperTable1Row]) -> str:
    """Markdown: the paper's Table 1 with the measured rows beside, and a caption naming each headline."""
    frame = table1_frame(score_frame(scores, "real"), paper)
    caption = "; ".join(f"{c.name} = {describe_headline(h)}" for c, h in suite_columns("real"))
    return (render_table(frame, default_format=SCORE_FORMAT)
            + f"\n_Paper rows: arXiv 2502.13145 Table 1. Measured headlines (lmms-eval): {caption}. "
              "\"-\" = not reported / not measured._\n")


def percent_columns(suite: str = "mini") -> list[str]:
    """Columns averaged in the ``avg`` column: headlines with scale 100 (a 0-1 fraction shown in percent)."""
    return [c.name for c, h in suite_columns(suite) if h.scale == 100.0]


def mini_frame(scores: Mapping[str, ModelScores]) -> pd.DataFrame:
    """The mini-suite scores plus ``avg``: the mean of :func:`percent_columns`, NaN unless all of them are present."""
    frame = score_frame(scores, "mini")
    pct = percent_columns("mini")
    frame["avg"] = frame[pct].mean(axis=1, skipna=False) if pct else float("nan")
    return frame


def render_mini(scores: Mapping[str, ModelScores]) -> str:
    """Markdown: the mini-suite table (measured only) with a note naming each mini task and the average's rule."""
    frame = mini_frame(scores)
    chance = {c: MINI_CHANCE.get(c, float("nan")) for c in frame.columns if c != "avg"}
    pct = percent_columns("mini")
    chance["avg"] = sum(chance[c] for c in pct) / len(pct) if pct and all(c in chance for c in pct) else float("nan")
    frame.loc[CHANCE_ROW] = [chance.get(c, float("nan")) for c in frame.columns]
    note = "; ".join(f"{c.name} = {describe_headline(h)}" for c, h in suite_columns("mini"))
    pct_names = ", ".join(pct)
    return (render_table(frame, default_format=SCORE_FORMAT, index=True)
            + f"\n_Mini suite (offline stand-ins, not comparable with the paper's numbers): {note}. "
              f"avg = mean of the percentage-scale columns ({pct_names}); score-scale columns (e.g. the MME-style "
              "score, whose maximum is task-specific) are left out of it, and avg is \"-\" unless all of these are "
              f"present. `{CHANCE_ROW}`: the expected score of answering uniformly at random (see "
              "`mmmamba_bench.benchmarks.MINI_CHANCE`)._\n")


def render_sources(scores: Mapping[str, ModelScores]) -> str:
    """Markdown bullet list: which results file each (label, task) came from."""
    lines = []
    for label, s in scores.items():
        by_file: dict[Path, list[str]] = {}
        for task, path in sorted(s.sources.items()):
            by_file.setdefault(path, []).append(task)
        for path, tasks in by_file.items():
            lines.append(f"- `{label}`: {', '.join(tasks)} from `{path}`")
    return "\n".join(lines) + "\n"
