"""A configuration's quality from its per-sample logs, with a bootstrap interval over documents.

Quality is read from lmms-eval's per-sample logs (``<stamp>_samples_<task>.jsonl`` beside the results file), with
``regress``'s machinery: each task's headline metric (the Table-1 column's, :data:`mmmamba_bench.benchmarks.TABLE1`)
recomputed from the samples by the task's own lmms-eval aggregation function, documents resampled as whole clusters
(MME image pairs, POPE images, MMBench circular groups: :data:`mmmamba_bench.regress.compare.CLUSTER_KEYS`).

- A **column** is a Table-1 column: one task, or POPE's three splits averaged. Its value is in the table's units
  (accuracy x 100; MME in score points).
- The **quality score** is the mean of the columns in percent, MME left out (a sum of category scores whose maximum
  depends on the task: 1,000 on the mini-suite, 2,000 for MME perception), as the demo report's ``avg``.
- Its **95% interval** (:func:`cluster_bootstrap`): percentile bootstrap that draws clusters with replacement from
  the clusters of all tasks together (the draw scheme of :func:`mmmamba_bench.regress.stats.paired_bootstrap`, so a
  configuration's interval and the paired differences between configurations come from the same resampling); a
  resample that leaves a task without documents is drawn again.
- **Differences** between two configurations on the same documents (:func:`paired_difference`):
  :func:`~mmmamba_bench.regress.stats.paired_bootstrap` itself, the same clusters drawn for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmmamba_bench.benchmarks import TABLE1
from mmmamba_bench.regress.runs import Run, check_comparable, load_run
from mmmamba_bench.regress.stats import BootstrapResult, clusters_of, paired_bootstrap, resample_clusters

NOT_IN_MEAN = ("MME",)  # score-scale columns, left out of the quality score
Record = tuple[str, Any]  # (task, the sample's value of the column's metric)
Aggregations = dict[str, dict[str, Callable] | str]  # task -> {metric: aggregation}, or why there is none


class QualityError(ValueError):
    """Per-sample logs that cannot give a score (a task without logs or aggregation, other documents)."""


@dataclass(frozen=True)
class Column:
    """One Table-1 column of the evaluated tasks: ``tasks`` (those evaluated) averaged, each ``metric`` x ``scale``."""

    name: str
    tasks: tuple[str, ...]
    metric: str
    scale: float

    @property
    def in_mean(self) -> bool:
        return self.name not in NOT_IN_MEAN


def columns_for(tasks: Sequence[str]) -> list[Column]:
    """The Table-1 columns (real or mini headline) the ``tasks`` fill, in Table 1's order. A column of several
    tasks (POPE) averages those of them that were evaluated."""
    out = []
    for column in TABLE1:
        for head in (column.real, column.mini):
            if head is None:
                continue
            present = tuple(t for t in head.tasks if t in tasks)
            if present:
                name = column.name if present == head.tasks else f"{column.name} ({', '.join(present)})"
                out.append(Column(name, present, head.metric, head.scale))
    missing = sorted(set(tasks) - {t for c in out for t in c.tasks})
    if missing:
        raise QualityError(f"tasks {missing} give no Table-1 column (no headline metric to score them by)")
    return out


def check_quality_tasks(tasks: Sequence[str]) -> list[Column]:
    """The columns, with at least one in the quality score; checked before a sweep starts."""
    columns = columns_for(tasks)
    if not any(c.in_mean for c in columns):
        raise QualityError(f"--tasks {','.join(tasks)}: the quality score averages percentage columns and MME's "
                           f"score is left out of it; add a task such as mini_sqa / paper_scienceqa_img")
    return columns


def aggregations(tasks: Sequence[str]) -> Aggregations:
    """Each task's aggregation functions, read from its lmms-eval YAML (imports lmms-eval)."""
    from mmmamba_bench.regress.compare import aggregation_functions

    return aggregation_functions(list(tasks))


@dataclass
class EvalSamples:
    """One configuration's per-sample values of its columns' metrics, in a fixed document order."""

    run: Run
    records: list[Record]
    keys: list[tuple[str, Hashable]]  # (task, cluster) of each record

    @property
    def documents(self) -> int:
        return len(self.records)

    @property
    def clusters(self) -> int:
        return len(set(self.keys))


def load_samples(folder: str | Path, columns: Sequence[Column]) -> EvalSamples:
    """The newest evaluation under ``folder`` (lmms-eval's layout) with every column task's per-sample log."""
    from mmmamba_bench.regress.compare import CLUSTER_KEYS
    from mmmamba_bench.regress.runs import NotComparable

    try:
        run = load_run(folder)
    except NotComparable as exc:
        raise QualityError(str(exc)) from None
    records: list[Record] = []
    keys: list[tuple[str, Hashable]] = []
    for column in columns:
        for task in column.tasks:
            if task not in run.samples:
                raise QualityError(f"{run.results_file}: task {task!r} was not evaluated")
            key = CLUSTER_KEYS.get(task, lambda s: s["doc_id"])
            for doc_id in sorted(run.samples[task]):
                sample = run.samples[task][doc_id]
                if column.metric not in sample:
                    raise QualityError(f"{run.results_file}: task {task!r} document {doc_id} has no per-sample "
                                       f"{column.metric!r}")
                records.append((task, sample[column.metric]))
                keys.append((task, key(sample)))
    return EvalSamples(run, records, keys)


def quality_metric(columns: Sequence[Column], aggs: Aggregations) -> Callable[[Sequence[Record]], float]:
    """records -> the quality score (mean of the in-mean columns); a task without records raises ValueError."""
    values = column_values(columns, aggs)
    used = [c.name for c in columns if c.in_mean]

    def metric(records: Sequence[Record]) -> float:
        per_column = values(records)
        return sum(per_column[name] for name in used) / len(used)

    return metric


def column_values(columns: Sequence[Column], aggs: Aggregations) -> Callable[[Sequence[Record]], dict[str, float]]:
    """records -> {column: value in the table's units}, each task's value by its own aggregation function."""
    for column in columns:
        for task in column.tasks:
            agg = aggs.get(task)
            if isinstance(agg, str) or agg is None or column.metric not in agg:
                why = agg if isinstance(agg, str) else f"no aggregation for {column.metric!r} in its task YAML"
                raise QualityError(f"task {task!r}: cannot recompute its headline metric from samples ({why})")

    def values(records: Sequence[Record]) -> dict[str, float]:
        by_task: dict[str, list[Any]] = {}
        for task, value in records:
            by_task.setdefault(task, []).append(value)
        out = {}
        for column in columns:
            per_task = []
            for task in column.tasks:
                if not by_task.get(task):
                    raise ValueError(f"{task}: no documents in this resample")
                per_task.append(float(aggs[task][column.metric](by_task[task])) * column.scale)  # type: ignore[index]
            out[column.name] = sum(per_task) / len(per_task)
        return out

    return values


def relabel(record: Record, copy: int) -> Record:
    """A record for the ``copy``-th cluster drawn into a resample (tasks whose aggregation groups by an id: a
    cluster drawn twice must count twice; :data:`mmmamba_bench.regress.compare.RELABEL`)."""
    from mmmamba_bench.regress.compare import RELABEL

    task, value = record
    fn = RELABEL.get(task)
    return (task, fn(value, copy)) if fn is not None else record


@dataclass
class Quality:
    """A configuration's quality score with its bootstrap interval, and each column's value (table units)."""

    value: float
    ci_low: float
    ci_high: float
    columns: dict[str, float] = field(default_factory=dict)
    documents: int = 0
    clusters: int = 0
    resamples: int = 0


def cluster_bootstrap(records: Sequence[Record], keys: Sequence[Hashable], metric: Callable[[Sequence[Record]], float],
                      *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                      relabel_fn: Callable[[Record, int], Record] | None = relabel) -> tuple[float, float, float]:
    """(metric on all records, percentile interval low, high): clusters drawn with replacement, the draws of
    :func:`~mmmamba_bench.regress.stats.paired_bootstrap` with the same seed; a resample whose metric cannot be
    computed (a task drawn empty) is drawn again."""
    if not records or len(records) != len(keys):
        raise ValueError(f"cluster_bootstrap: need equally many records and keys, at least one "
                         f"({len(records)} and {len(keys)})")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    groups = clusters_of(keys)

    def statistic(picks: np.ndarray) -> float:
        if relabel_fn is None:
            return metric([records[i] for g in picks for i in groups[g]])
        return metric([relabel_fn(records[i], k) for k, g in enumerate(picks) for i in groups[g]])

    stats = resample_clusters(len(groups), statistic, resamples, np.random.default_rng(seed), "cluster_bootstrap")
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return metric(list(records)), float(low), float(high)


def quality(samples: EvalSamples, columns: Sequence[Column], aggs: Aggregations, *, resamples: int = 2000,
            seed: int = 0) -> Quality:
    """The quality score of one configuration with its 95% interval, and its column values."""
    metric = quality_metric(columns, aggs)
    value, low, high = cluster_bootstrap(samples.records, samples.keys, metric, resamples=resamples, seed=seed)
    cols = column_values(columns, aggs)(samples.records)
    return Quality(value, low, high, cols, samples.documents, samples.clusters, resamples)


def paired_difference(better: EvalSamples, worse: EvalSamples, columns: Sequence[Column], aggs: Aggregations, *,
                      resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """Quality of ``better`` minus quality of ``worse`` on the same documents: the paired cluster bootstrap
    (:func:`~mmmamba_bench.regress.stats.paired_bootstrap`; ``difference``, ``ci_low``, ``ci_high``)."""
    from mmmamba_bench.regress.runs import NotComparable

    try:
        check_comparable(worse.run, better.run)
    except NotComparable as exc:
        raise QualityError(f"{worse.run.results_file} and {better.run.results_file}: {exc}") from None
    if worse.keys != better.keys:
        raise QualityError(f"{worse.run.results_file} and {better.run.results_file}: the documents differ")
    return paired_bootstrap(worse.records, better.records, worse.keys, quality_metric(columns, aggs),
                            resamples=resamples, seed=seed, confidence=confidence, relabel=relabel)


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
