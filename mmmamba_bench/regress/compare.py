"""``mmmamba-bench regress``: is the candidate run worse than the baseline, task by task, beyond chance?

For every task both runs evaluated, the task's HEADLINE metric (the Table-1 column's, from
:data:`mmmamba_bench.benchmarks.TABLE1`; else the task's first metric) is recomputed from the per-sample logs with the
task's own aggregation function (read from its lmms-eval YAML: the very function that produced the score), under a
paired bootstrap over documents that resamples whole clusters (MME image pairs, POPE images, MMBench circular
groups). A 0/1 per-document metric averaged by ``mean`` is also tested with McNemar's exact test (its p-value is the
one used); otherwise the bootstrap p-value. Holm's correction runs over the compared tasks. Verdict per task:
``regressed`` (significant after correction AND the drop exceeds the tolerance), ``improved`` (the same upwards), or
``no significant change``. The table also gives the minimum detectable effect at 80% power for the run's size.

Exit codes (CLI): 0 nothing regressed, 1 a task regressed, 2 the runs cannot be compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from mmmamba_bench.benchmarks import TABLE1, Headline
from mmmamba_bench.regress.runs import NotComparable, Run, check_comparable, load_run
from mmmamba_bench.regress.stats import (holm, mcnemar_exact, minimum_detectable_effect, paired_bootstrap,
                                         paired_bootstrap_mean)

REGRESSED, IMPROVED, NO_CHANGE, NOT_COMPARED = "regressed", "improved", "no significant change", "not compared"


def _doc(sample: dict) -> dict:
    return sample.get("doc") if isinstance(sample.get("doc"), dict) else {}


# Documents scored together (resampled as a unit). Default: each document alone.
CLUSTER_KEYS: dict[str, Callable[[dict], Hashable]] = {
    "mini_mme": lambda s: s["mme_score"]["image_id"],
    "mini_mmbench": lambda s: s["circular_accuracy"]["question_id"],
    "mini_pope": lambda s: _doc(s).get("group", s["doc_id"]),
    "paper_mme": lambda s: (s.get("mme_perception_score") or s.get("mme_cognition_score") or {}).get(
        "question_id", s["doc_id"]),
    "paper_pope_adv": lambda s: _doc(s).get("image_source", s["doc_id"]),
    "paper_pope_pop": lambda s: _doc(s).get("image_source", s["doc_id"]),
    "paper_pope_random": lambda s: _doc(s).get("image_source", s["doc_id"]),
    "paper_mmbench_en_dev": lambda s: int(_doc(s).get("index", s["doc_id"])) % 1_000_000,
}


def _renamed(field_name: str) -> Callable[[Any, int], Any]:
    """A record copy whose grouping id names the resampled cluster copy (see ``paired_bootstrap``'s relabel)."""
    def relabel(record: Any, copy: int) -> Any:
        return {**record, field_name: f"{record[field_name]}#{copy}"} if isinstance(record, dict) else record
    return relabel


# Aggregations that group per-sample records by an id: a cluster drawn twice must stay two clusters.
RELABEL: dict[str, Callable[[Any, int], Any]] = {
    "mini_mme": _renamed("image_id"),
    "mini_mmbench": _renamed("question_id"),
    "paper_mme": _renamed("question_id"),
}


@dataclass
class TaskComparison:
    task: str  # a task, or a Table-1 column over several tasks (e.g. POPE's three splits)
    metric: str
    scale: float  # the report shows values x scale (the paper's units)
    documents: int
    clusters: int = 0
    baseline: float | None = None
    candidate: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    test: str = ""
    p_value: float | None = None
    p_holm: float | None = None
    mde: float | None = None
    verdict: str = NOT_COMPARED
    note: str = ""


@dataclass
class Comparison:
    baseline: str
    candidate: str
    alpha: float
    tolerance: float
    resamples: int
    rows: list[TaskComparison]

    @property
    def regressed(self) -> list[str]:
        return [r.task for r in self.rows if r.verdict == REGRESSED]


def headline_of(task: str, run: Run) -> Headline:
    for column in TABLE1:
        for h in (column.real, column.mini):
            if h is not None and task in h.tasks:
                return Headline((task,), h.metric, scale=h.scale)
    metrics = [k.split(",")[0] for k in run.results["results"][task] if "," in k and "_stderr" not in k]
    if not metrics:
        raise NotComparable(f"task {task!r}: no metric in {run.results_file}")
    return Headline((task,), metrics[0])


def aggregation_functions(tasks: Sequence[str]) -> dict[str, dict[str, Callable] | str]:
    """task -> {metric: aggregation function} from its lmms-eval YAML, or a string saying why it cannot be had."""
    from lmms_eval import utils
    from lmms_eval.api.registry import get_aggregation
    from lmms_eval.tasks import TaskManager

    from mmmamba_bench.eval.tasks import include_paths

    manager = TaskManager(include_path=include_paths(), include_defaults=False)  # this project's tasks: fast
    if not set(tasks) <= set(manager.task_index):
        manager = TaskManager(include_path=include_paths())  # lmms-eval's own tasks too (indexes hundreds)
    out: dict[str, dict[str, Callable] | str] = {}
    for task in tasks:
        info = manager.task_index.get(task)
        if not info or not info.get("yaml_path") or info.get("yaml_path") == -1:
            out[task] = "its task YAML is not known to lmms-eval here"
            continue
        try:
            config = utils.load_yaml_config(info["yaml_path"], mode="full")
        except Exception as exc:  # a hook module that needs credentials (a judge), a missing package ...
            out[task] = f"its task YAML cannot be loaded here ({type(exc).__name__}: {exc})"
            continue
        funcs: dict[str, Callable] = {}
        for entry in config.get("metric_list", []):
            agg = entry.get("aggregation", "mean")
            funcs[entry["metric"]] = get_aggregation(agg) if isinstance(agg, str) else agg
        out[task] = funcs
    return out


def _is_plain_mean(values: Sequence[Any], agg: Callable) -> bool:
    return getattr(agg, "__name__", "") == "mean" and all(
        isinstance(v, (bool, int, float)) and math.isfinite(v) for v in values)


def _is_binary_mean(values: Sequence[Any], agg: Callable) -> bool:
    return getattr(agg, "__name__", "") == "mean" and all(
        isinstance(v, (bool, int, float)) and v in (0, 1) for v in values)


def compare_task(task: str, baseline: Run, candidate: Run, agg: dict[str, Callable] | str, *, resamples: int,
                 seed: int) -> TaskComparison:
    head = headline_of(task, baseline)
    docs = sorted(d for d in baseline.samples[task]
                  if head.metric in baseline.samples[task][d] and head.metric in candidate.samples[task][d])
    row = TaskComparison(task=task, metric=head.metric, scale=head.scale, documents=len(docs))
    if isinstance(agg, str):
        row.note = agg
        return row
    if head.metric not in agg:
        row.note = f"no aggregation for {head.metric!r} in its task YAML"
        return row
    if not docs:
        row.note = f"no per-sample values of {head.metric!r}"
        return row
    fn = agg[head.metric]
    b_vals = [baseline.samples[task][d][head.metric] for d in docs]
    c_vals = [candidate.samples[task][d][head.metric] for d in docs]
    key = CLUSTER_KEYS.get(task, lambda s: s["doc_id"])
    keys = [key(baseline.samples[task][d]) for d in docs]
    if _is_plain_mean(b_vals + c_vals, fn) and task not in RELABEL:
        res = paired_bootstrap_mean(b_vals, c_vals, keys, resamples=resamples, seed=seed)
    else:
        res = paired_bootstrap(b_vals, c_vals, keys, lambda vals: float(fn(list(vals))), resamples=resamples,
                               seed=seed, relabel=RELABEL.get(task))
    row.clusters = res.clusters
    row.baseline, row.candidate, row.difference = res.baseline, res.candidate, res.difference
    row.ci_low, row.ci_high = res.ci_low, res.ci_high
    row.mde = minimum_detectable_effect(res.standard_error)
    if _is_binary_mean(b_vals + c_vals, fn) and row.clusters == len(docs):
        b, c, p = mcnemar_exact([int(v) for v in b_vals], [int(v) for v in c_vals])
        row.test, row.p_value = f"McNemar exact (b={b}, c={c})", p
    else:
        row.test, row.p_value = f"paired cluster bootstrap ({resamples} resamples)", res.p_value
    return row


def compare_column(name: str, head: Headline, baseline: Run, candidate: Run,
                   aggs: dict[str, dict[str, Callable] | str], *, resamples: int, seed: int) -> TaskComparison:
    """A Table-1 column that averages several tasks (POPE's three splits): resampled jointly, clusters per task."""
    records_b, records_c, keys = [], [], []
    for task in head.tasks:
        agg = aggs[task]
        if isinstance(agg, str) or head.metric not in agg:
            return TaskComparison(name, head.metric, head.scale, 0, note=f"{task}: cannot aggregate")
        key = CLUSTER_KEYS.get(task, lambda s: s["doc_id"])
        for d in sorted(baseline.samples[task]):
            sb, sc = baseline.samples[task][d], candidate.samples[task][d]
            if head.metric in sb and head.metric in sc:
                records_b.append((task, sb[head.metric]))
                records_c.append((task, sc[head.metric]))
                keys.append((task, key(sb)))

    def metric(records: Sequence[tuple[str, Any]]) -> float:
        per_task = []
        for task in head.tasks:
            values = [v for t, v in records if t == task]
            if not values:
                raise ValueError(f"{task}: no documents in this resample")
            per_task.append(float(aggs[task][head.metric](values)))  # type: ignore[index]
        return sum(per_task) / len(per_task)

    res = paired_bootstrap(records_b, records_c, keys, metric, resamples=resamples, seed=seed)
    return TaskComparison(name, head.metric, head.scale, len(records_b), res.clusters, res.baseline, res.candidate,
                          res.difference, res.ci_low, res.ci_high,
                          f"paired cluster bootstrap ({resamples} resamples)", res.p_value,
                          mde=minimum_detectable_effect(res.standard_error))


def compare_runs(baseline_dir: str | Path, candidate_dir: str | Path, *, alpha: float = 0.05,
                 tolerance: float = 0.0, resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Compare two evaluation runs (see the module docstring); raises :class:`NotComparable`."""
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if resamples < 1000:
        raise ValueError(f"--resamples must be at least 1000, got {resamples}")
    baseline, candidate = load_run(baseline_dir), load_run(candidate_dir)
    check_comparable(baseline, candidate)
    aggs = aggregation_functions(baseline.tasks)
    rows = [compare_task(t, baseline, candidate, aggs[t], resamples=resamples, seed=seed) for t in baseline.tasks]
    for column in TABLE1:  # columns averaging several tasks of this run
        if len(column.real.tasks) > 1 and set(column.real.tasks) <= set(baseline.tasks):
            rows.append(compare_column(f"{column.name} (mean of {', '.join(column.real.tasks)})", column.real,
                                       baseline, candidate, aggs, resamples=resamples, seed=seed))
    tested = [r for r in rows if r.p_value is not None]
    for r, p in zip(tested, holm([r.p_value for r in tested])):
        r.p_holm = p
        drop = -(r.difference or 0.0) * r.scale
        if p < alpha and drop > tolerance:
            r.verdict = REGRESSED
        elif p < alpha and -drop > tolerance:
            r.verdict = IMPROVED
        else:
            r.verdict = NO_CHANGE
    return Comparison(str(baseline.results_file), str(candidate.results_file), alpha, tolerance, resamples, rows)


# ---- reports -------------------------------------------------------------------------------------------------------

def _fmt(x: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def render_markdown(c: Comparison) -> str:
    lines = [f"# Score regression: candidate vs baseline", "",
             f"- baseline: `{c.baseline}`", f"- candidate: `{c.candidate}`",
             f"- alpha {c.alpha} (Holm-corrected over the {sum(r.p_value is not None for r in c.rows)} compared "
             f"rows), tolerance {c.tolerance} (in the table's units), {c.resamples} bootstrap resamples", "",
             "| task | metric | docs | clusters | baseline | candidate | diff | 95% CI | test | p | p (Holm) | "
             "MDE (80% power) | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|"]
    for r in c.rows:
        ci = "-" if r.ci_low is None else f"[{_fmt(r.ci_low, r.scale)}, {_fmt(r.ci_high, r.scale)}]"
        verdict = f"**{r.verdict}**" if r.verdict == REGRESSED else r.verdict
        if r.note:
            verdict += f" ({r.note})"
        lines.append(f"| {r.task} | {r.metric} | {r.documents} | {r.clusters} | {_fmt(r.baseline, r.scale)} | "
                     f"{_fmt(r.candidate, r.scale)} | {_fmt(r.difference, r.scale)} | {ci} | {r.test or '-'} | "
                     f"{_fmt(r.p_value, digits=4)} | {_fmt(r.p_holm, digits=4)} | {_fmt(r.mde, r.scale)} | "
                     f"{verdict} |")
    lines += ["", "Values in the paper's units (accuracies x100). MDE: the smallest true difference this run size "
                  "detects with 80% power at alpha 0.05. A verdict other than `regressed` / `improved` never claims "
                  "an ordering."]
    return "\n".join(lines) + "\n"


def write_reports(c: Comparison, out: str | Path) -> tuple[Path, Path]:
    from mmmamba_bench.results import atomic_write, write_json_atomic

    out = Path(out)
    js = write_json_atomic(out / "regress.json", {"schema": "mmmamba-bench/regress/v1", **asdict(c),
                                                   "regressed": c.regressed})
    md = out / "regress.md"
    with atomic_write(md) as f:
        f.write(render_markdown(c))
    return js, md
