"""The sweep report: ``report.md``, ``report.csv``, ``pareto_latency.png``, ``pareto_memory.png`` in ``OUT``.

Per configuration: the quality score with its 95% bootstrap interval (:mod:`mmmamba_bench.sweep.quality`), each
Table-1 column, the cost at every context (:mod:`mmmamba_bench.sweep.cost`, labelled measured / modelled with the
GPU), whether it is on the Pareto front at the report's context (:func:`pareto_front`: no other configuration is at
least as good in quality and at least as cheap, one of them strictly; point estimates, configurations out of memory
excluded), the paper's row beside it where one matches. Then the paper's orderings among the configurations with a
verdict each (:mod:`mmmamba_bench.sweep.verdicts`). Everything is computed before anything is written; each file is
written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmmamba_bench.results import atomic_write
from mmmamba_bench.sweep.configs import SweepConfig
from mmmamba_bench.sweep.cost import GIB, Cost, CostRow
from mmmamba_bench.sweep.quality import Column, EvalSamples, Quality
from mmmamba_bench.sweep.verdicts import CLAIMS, HOLDS, NOT_RESOLVED, REVERSED, Judgement, paper_mean

REPORT_MD, REPORT_CSV = "report.md", "report.csv"
LATENCY_PNG, MEMORY_PNG = "pareto_latency.png", "pareto_memory.png"
PAPER_COLUMNS = ("MME", "POPE", "TQA", "SQA-I")


@dataclass
class ConfigResult:
    config: SweepConfig
    record: dict[str, Any]  # done.json
    samples: EvalSamples
    quality: Quality
    cost: Cost
    pareto_latency: bool = False
    pareto_memory: bool = False

    @property
    def seconds(self) -> float:
        return float(sum(self.record.get("seconds", {}).values()))


def pareto_front(points: Mapping[str, tuple[float, float | None]]) -> set[str]:
    """Names of the non-dominated points of ``{name: (quality, cost)}`` (quality higher, cost lower is better);
    points without a cost are left out."""
    have = {n: (q, c) for n, (q, c) in points.items() if c is not None and math.isfinite(c) and math.isfinite(q)}
    front = set()
    for name, (q, c) in have.items():
        dominated = any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for other, (q2, c2) in have.items()
                        if other != name)
        if not dominated:
            front.add(name)
    return front


def _cost_value(row: CostRow | None, what: str) -> float | None:
    if row is None or row.status != "ok":
        return None
    if what == "latency":
        return row.decode_ms_per_token
    return None if row.memory_bytes is None else row.memory_bytes / GIB


def collect(configs: Sequence[SweepConfig], plan, out: Path) -> tuple[list[ConfigResult], list[Column], Any]:
    """Read every configuration's outputs (their ``done.json``) and compute its quality; mark the fronts."""
    import json

    from mmmamba_bench.sweep.quality import aggregations, check_quality_tasks, load_samples, quality
    from mmmamba_bench.sweep.paths import config_paths, read_done, results_file

    columns = check_quality_tasks(plan.tasks)
    aggs = aggregations(plan.tasks)
    results = []
    for cfg in configs:
        paths = config_paths(out, cfg)
        record = read_done(paths)
        if record is None:
            raise FileNotFoundError(f"{paths.done}: configuration {cfg.name} is not complete")
        found = results_file(paths.eval, cfg.name)
        if found is None:
            raise FileNotFoundError(f"{paths.eval / cfg.name}: no evaluation results of configuration {cfg.name}")
        samples = load_samples(found, columns)
        q = quality(samples, columns, aggs, resamples=plan.settings.resamples)
        cost = Cost.from_dict(json.loads(paths.cost.read_text()))
        results.append(ConfigResult(cfg, record, samples, q, cost))
    ctx = plan.report_context
    for what, attr in (("latency", "pareto_latency"), ("memory", "pareto_memory")):
        front = pareto_front({r.config.name: (r.quality.value, _cost_value(r.cost.at(ctx), what)) for r in results})
        for r in results:
            setattr(r, attr, r.config.name in front)
    return results, columns, aggs


def judgements(results: Sequence[ConfigResult], columns: Sequence[Column], aggs, paper_rows, *, resamples: int,
               alpha: float = 0.05) -> list[Judgement]:
    """The paper's orderings among the configurations, each judged by a paired bootstrap of our quality."""
    from mmmamba_bench.sweep.quality import paired_difference
    from mmmamba_bench.sweep.verdicts import judge, paper_orderings

    by_name = {r.config.name: r for r in results}

    def difference(better: str, worse: str, confidence: float) -> tuple[float, float, float]:
        res = paired_difference(by_name[better].samples, by_name[worse].samples, columns, aggs,
                                resamples=resamples, confidence=confidence)
        return res.difference, res.ci_low, res.ci_high

    return judge(paper_orderings([r.config for r in results], paper_rows), difference, alpha)


def paper_rows() -> dict[tuple[int, str], Mapping[str, float]]:
    from mmmamba_bench.report.paper import load_ablations

    return {(row.table, row.setting): row.scores for row in load_ablations()}


# ---- rendering ---------------------------------------------------------------------------------------------------

def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"


def _cost_cell(row: CostRow | None, what: str) -> str:
    if row is None:
        return "-"
    value = row.decode_ms_per_token if what == "latency" else (
        None if row.memory_bytes is None else row.memory_bytes / GIB)
    text = _ms(value) if what == "latency" else ("-" if value is None else f"{value:.2f}" if value >= 0.01
                                                 else f"{value:.2e}")
    return text if row.status == "ok" else f"OOM ({text})" if value is not None else "OOM"


def context_label(tokens: int) -> str:
    from mmmamba_bench.report.profile import context_label as label

    return label(tokens)


def _paper_cell(cfg: SweepConfig, rows) -> str:
    cells = []
    for ref in cfg.paper:
        scores = rows.get((ref.table, ref.setting))
        if scores is None:
            continue
        values = " / ".join(_fmt(scores.get(c)) for c in PAPER_COLUMNS)
        cells.append(f"T{ref.table} {ref.setting}: {values}")
    return "; ".join(cells) or "-"


def render_markdown(results: Sequence[ConfigResult], columns: Sequence[Column], judged: Sequence[Judgement], plan,
                    rows, title: str) -> str:
    s = plan.settings
    ctx = plan.report_context
    cost_label = results[0].cost.label if results else "-"
    teacher_layers = plan.teacher_config.num_layers
    in_mean = [c.name for c in columns if c.in_mean]
    capped = f", every stage capped at {s.max_steps} steps" if s.max_steps else ""
    limit = plan.identity.get("limit")
    docs = f"the first {limit} documents of each (whole scoring clusters)" if limit else "every document"
    mme = "; MME's score is shown but left out of the mean" if any(not c.in_mean for c in columns) else ""
    note = results[0].cost.note if results else ""
    bullets = [
        (f"Teacher: `{s.teacher}` ({teacher_layers} global layers, weights sha256 `{plan.teacher_sha256[:12]}...`); "
         f"recipe `{_recipe_name(s.recipe)}` (sha256 `{plan.identity['recipe_sha256'][:12]}...`){capped}."),
        (f"Tasks: {', '.join(plan.tasks)}, {docs}. **Quality** = mean of the columns {', '.join(in_mean)} "
         f"(accuracy-type scores x 100{mme}), each task's headline metric recomputed from lmms-eval's per-sample "
         f"logs by the task's own aggregation; 95% interval: percentile bootstrap over documents (whole scoring "
         f"clusters), {s.resamples} resamples."),
        (f"**Cost**: {cost_label}: {note}. The table's cost columns are at {context_label(ctx)} tokens of context; "
         f"every context is in the cost table below."),
        ("**Pareto front** (marked *): no other configuration has at least its quality at no more cost, one of them "
         "strictly (point estimates; a configuration out of memory is never on it)."),
        ("**Paper**: the row of the paper's Tables 3-6 the configuration stands for (MME / POPE / TQA / SQA-I, "
         "mmMamba-2.7B on the real benchmarks, Table 5/6 rows of 32 layers); comparable with ours in ordering, not "
         "in value."),
    ]
    lines = [f"# {title}", "", *[f"- {b}" for b in bullets], ""]
    col_names = [c.name for c in columns]
    head = (["configuration", "built", "attention at", "init", "stages", "quality [95% CI]", *col_names,
             f"ms/token @{context_label(ctx)}", f"memory GiB @{context_label(ctx)}", "Pareto (latency)",
             "Pareto (memory)", "paper (MME / POPE / TQA / SQA-I)", "run time s"])
    lines += ["## Configurations", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    for r in results:
        c, q = r.config, r.quality
        at = ", ".join(map(str, c.attention_layers)) or "none"
        row = r.cost.at(ctx)
        cells = [f"`{c.name}`", c.build, at, c.init if c.build != "teacher" else "-",
                 c.stages_label if c.build == "distilled" else "-",
                 f"{q.value:.1f} [{q.ci_low:.1f}, {q.ci_high:.1f}]",
                 *[_fmt(q.columns.get(n)) for n in col_names], _cost_cell(row, "latency"), _cost_cell(row, "memory"),
                 "*" if r.pareto_latency else "", "*" if r.pareto_memory else "", _paper_cell(c, rows),
                 f"{r.seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![quality vs decode latency]({LATENCY_PNG})", "", f"![quality vs memory]({MEMORY_PNG})", ""]
    lines += _verdict_section(judged)
    lines += _cost_section(results, plan)
    made = (f"`mmmamba-bench sweep` ({len(results)} configurations; per configuration: `configs/<name>/model` "
            f"from `distill` with the configuration's layout, init and stages, `configs/<name>/eval/<name>/` "
            f"lmms-eval results with per-sample logs, `configs/<name>/cost.json`). Settings, hashes and step times: "
            f"`sweep.json`; the numbers of this table: `report.csv`.")
    lines += ["## How this was made", "", made, ""]
    return "\n".join(lines)


def _recipe_name(recipe: Any) -> str:
    return str(recipe) if isinstance(recipe, (str, Path)) else type(recipe).__name__


def _verdict_section(judged: Sequence[Judgement]) -> list[str]:
    out = ["## The paper's orderings", ""]
    if not judged:
        return out + ["_No two configurations stand for rows of one of the paper's Tables 3-6: no ordering to judge._",
                      ""]
    conf = judged[0].confidence
    level = ("95% interval" if len(judged) == 1 else
             f"{100 * conf:.2f}% intervals, 95% jointly over the {len(judged)} orderings (Bonferroni)")
    how = (f"Verdict from the interval of the paired difference (paper's better minus paper's worse; our quality on "
           f"the same documents, the same clusters drawn for both; {level}): **holds** when the whole interval is "
           f"above 0, **reversed** when below, **not resolved: intervals overlap** otherwise (no ordering is "
           f"claimed).")
    head = ("| paper ordering | paper (mean POPE / TQA / SQA-I) | ours: better | ours: worse | difference [interval] "
            "| verdict |")
    out += [how, "", head, "|---|---|---|---|---|---|"]
    for j in judged:
        o = j.ordering
        out.append(f"| {o.text} (`{o.better}` > `{o.worse}`) | {_fmt(o.paper_better)} vs {_fmt(o.paper_worse)} | "
                   f"`{o.better}` | `{o.worse}` | {j.difference:+.1f} [{j.ci_low:+.1f}, {j.ci_high:+.1f}] | "
                   f"**{j.verdict}** |")
    out.append("")
    for table in sorted({j.ordering.table for j in judged}):
        mine = [j for j in judged if j.ordering.table == table]
        counts = {v: sum(j.verdict == v for j in mine) for v in (HOLDS, REVERSED, NOT_RESOLVED)}
        if counts[HOLDS] == len(mine):
            summary = "holds for every pair"
        elif counts[REVERSED] == len(mine):
            summary = "reversed for every pair"
        else:
            summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        out.append(f"- Table {table} ({CLAIMS.get(table, '')}): {summary} ({len(mine)} pair(s)).")
    return out + [""]


def _cost_section(results: Sequence[ConfigResult], plan) -> list[str]:
    contexts = list(plan.settings.contexts)
    labels = sorted({r.cost.label for r in results})
    out = [f"## Cost at every context ({'; '.join(labels)})", "",
           "| configuration | " + " | ".join(f"ms/token @{context_label(c)}" for c in contexts) + " | "
           + " | ".join(f"GiB @{context_label(c)}" for c in contexts) + " |",
           "|---|" + "---:|" * (2 * len(contexts))]
    for r in results:
        lat = [_cost_cell(r.cost.at(c), "latency") for c in contexts]
        mem = [_cost_cell(r.cost.at(c), "memory") for c in contexts]
        out.append(f"| `{r.config.name}` | " + " | ".join(lat + mem) + " |")
    return out + [""]


def render_csv(results: Sequence[ConfigResult], columns: Sequence[Column], plan, rows) -> str:
    contexts = list(plan.settings.contexts)
    ctx = plan.report_context
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    col_names = [c.name for c in columns]
    w.writerow(["config", "built", "layout", "attention_layers", "init", "stages", "quality", "quality_ci_low",
                "quality_ci_high", *col_names, "documents", "clusters", "cost", "report_context",
                "ms_per_token", "memory_gib", "cost_status", "pareto_latency", "pareto_memory",
                *[f"ms_per_token@{c}" for c in contexts], *[f"memory_gib@{c}" for c in contexts],
                "paper_rows", *[f"paper_{c}" for c in PAPER_COLUMNS], "paper_mean", "seconds"])
    for r in results:
        c, q = r.config, r.quality
        row = r.cost.at(ctx)
        first = next(((ref, rows[(ref.table, ref.setting)]) for ref in c.paper if (ref.table, ref.setting) in rows),
                     None)
        w.writerow([c.name, c.build, c.layout, " ".join(map(str, c.attention_layers)),
                    c.init if c.build != "teacher" else "", c.stages_label if c.build == "distilled" else "",
                    f"{q.value:.4f}", f"{q.ci_low:.4f}", f"{q.ci_high:.4f}",
                    *[f"{q.columns[n]:.4f}" for n in col_names], q.documents, q.clusters, r.cost.label, ctx,
                    _num(row.decode_ms_per_token if row else None),
                    _num(None if row is None or row.memory_bytes is None else row.memory_bytes / GIB),
                    row.status if row else "", int(r.pareto_latency), int(r.pareto_memory),
                    *[_num(getattr(r.cost.at(x), "decode_ms_per_token", None)) for x in contexts],
                    *[_num(None if r.cost.at(x) is None or r.cost.at(x).memory_bytes is None
                           else r.cost.at(x).memory_bytes / GIB) for x in contexts],
                    "; ".join(f"T{ref.table} {ref.setting}" for ref in c.paper),
                    *[_num(first[1].get(p)) if first else "" for p in PAPER_COLUMNS],
                    _num(paper_mean(first[1])) if first else "", f"{r.seconds:.1f}"])
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def write_report(configs: Sequence[SweepConfig], plan, out: Path, title: str | None = None) -> Path:
    """Compute everything, then write report.md, report.csv and the two plots (each atomically)."""
    from mmmamba_bench.sweep.plots import Point, plot_pareto, save

    out = Path(out)
    results, columns, aggs = collect(configs, plan, out)
    rows = paper_rows()
    judged = judgements(results, columns, aggs, rows, resamples=plan.settings.resamples)
    ctx = context_label(plan.report_context)
    title = title or f"Sweep: {len(results)} configurations of `{Path(plan.settings.teacher).name}`"
    markdown = render_markdown(results, columns, judged, plan, rows, title)
    table = render_csv(results, columns, plan, rows)
    figures = {}
    for what, name, xlabel in (("latency", LATENCY_PNG, f"decode ms / token at {ctx} tokens"),
                               ("memory", MEMORY_PNG, f"memory (GiB) at {ctx} tokens")):
        points = []
        for r in results:
            row = r.cost.at(plan.report_context)
            value = None if row is None else (row.decode_ms_per_token if what == "latency" else
                                              None if row.memory_bytes is None else row.memory_bytes / GIB)
            points.append(Point(r.config.name, r.quality.value, r.quality.ci_low, r.quality.ci_high, value,
                                fits=row is not None and row.status == "ok",
                                on_front=r.pareto_latency if what == "latency" else r.pareto_memory))
        label = results[0].cost.label if results else ""
        figures[name] = plot_pareto(points, xlabel, f"Quality vs {'decode latency' if what == 'latency' else 'memory'}"
                                                    f" at {ctx} tokens: {label}")
    with atomic_write(out / REPORT_CSV) as f:
        f.write(table)
    for name, fig in figures.items():
        save(fig, out / name)
    with atomic_write(out / REPORT_MD) as f:
        f.write(markdown)
    return out / REPORT_MD
