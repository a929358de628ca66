"""The placement search's result: the ranking with intervals, the proposals and their costs (``place.json``,
``place.md``), computed from the runs' records before anything is written; each file is written atomically."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmmamba_bench.results import atomic_write, write_json_atomic
from mmmamba_bench.sweep.budget import LATENCY, LAYERS, MEMORY, LayerCosts, select
from mmmamba_bench.sweep.cost import GIB, CostRow
from mmmamba_bench.sweep.ranking import (Comparison, Frequencies, Interval, LayerUtility, adjacent_comparisons,
                                         compare, selection_frequencies, t_interval, utilities)
from mmmamba_bench.sweep.utility import BASELINE, run_name

PLACE_JSON, PLACE_MD = "place.json", "place.md"
SCHEMA = "mmmamba-bench/place/v1"  # place.json and search.json
SEARCH, MOST_FREQUENT, HEAD_INTERLEAVED = "search", "most frequent", "head-interleaved"


@dataclass
class Proposal:
    kind: str  # SEARCH | MOST_FREQUENT | HEAD_INTERLEAVED
    layers: tuple[int, ...]
    layout: str
    cost: CostRow  # at the search's context
    utility: Interval | None  # additive estimate: per seed, the sum of the layers' utilities (None: a layer not run)
    frequency: float  # how often the seed bootstrap selects exactly this set


@dataclass
class PlaceResult:
    kl: dict[str, dict[int, float]]  # layout name -> seed -> held-out KL
    ranked: list[LayerUtility]
    adjacent: list[Comparison]
    boundary: list[Comparison]  # each proposed layer against each candidate left out
    frequencies: Frequencies
    proposals: list[Proposal]
    costs: LayerCosts
    fits: dict[str, bool | None]  # proposal kind -> its own cost within a cost budget (None: a layer budget)
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @property
    def proposal(self) -> Proposal:
        return self.proposals[0]

    @property
    def resolved(self) -> bool | None:
        """Every proposed layer's utility above every left-out candidate's, each paired interval excluding 0 (an
        intersection-union test: the joint claim holds at the pairs' 95%); None when no pair separates the proposal
        from the rest (none or every candidate proposed)."""
        return all(c.resolved for c in self.boundary) if self.boundary else None


def analyse(plan, records: Sequence[dict[str, Any]], cost_of: Callable[[tuple[int, ...]], CostRow]) -> PlaceResult:
    """Utilities, comparisons, the seed bootstrap and the proposals (``cost_of``: a layout's cost at the context)."""
    from mmmamba_bench.sweep.configs import layout_string, placement

    kl: dict[str, dict[int, float]] = {}
    for r in records:
        kl.setdefault(r["name"], {})[int(r["seed"])] = float(r["kl"])
    names = {i: run_name(i) for i in plan.candidates}
    ranked = utilities(kl, BASELINE, names)
    budget, costs = plan.budget, plan.costs

    def rule(u):
        return select(budget, u, costs)

    chosen = rule({u.layer: u.utility.mean for u in ranked})
    freq = selection_frequencies(ranked, rule, resamples=plan.settings.resamples)
    by_layer = {u.layer: u for u in ranked}
    left_out = [u for u in ranked if u.layer not in chosen]
    boundary = [compare(by_layer[a], b) for a in chosen for b in left_out]

    def proposal(kind: str, at: tuple[int, ...]) -> Proposal:
        per_seed = None
        if all(i in by_layer for i in at):
            seeds = ranked[0].seeds
            per_seed = t_interval([sum(by_layer[i].utility.values[j] for i in at) for j in range(len(seeds))])
        frequency = dict(freq.sets).get(tuple(sorted(at)), 0.0)
        return Proposal(kind, at, layout_string(at, plan.num_layers, "head-interleaved" if kind == HEAD_INTERLEAVED
                                                else None), cost_of(at), per_seed, frequency)

    proposals = [proposal(SEARCH, chosen)]
    top_set = freq.sets[0][0]
    if top_set != chosen:
        proposals.append(proposal(MOST_FREQUENT, top_set))
    paper_at = placement("head-interleaved", len(chosen), plan.num_layers)
    proposals.append(proposal(HEAD_INTERLEAVED, paper_at))
    fits = {p.kind: None if budget.kind == LAYERS else _value(p.cost, budget.kind) <= budget.value
            for p in proposals}
    return PlaceResult(kl, ranked, adjacent_comparisons(ranked), boundary, freq, proposals, costs, fits,
                       {"runs": round(sum(sum(r.get("seconds", {}).values()) for r in records), 1)})


def _value(row: CostRow, kind: str) -> float:
    v = row.decode_ms_per_token if kind == LATENCY else row.memory_bytes
    return math.inf if v is None else float(v)


# ---- place.json ----------------------------------------------------------------------------------------------------

def _interval(iv: Interval | None) -> dict[str, Any] | None:
    return None if iv is None else {"mean": iv.mean, "ci_low": iv.ci_low, "ci_high": iv.ci_high, "sd": iv.sd,
                                    "per_seed": list(iv.values)}


def to_json(plan, result: PlaceResult) -> dict[str, Any]:
    s, costs = plan.settings, result.costs
    freq = result.frequencies
    return {
        "schema": SCHEMA,
        "settings": {**plan.identity, "budget": s.budget, "budget_kind": plan.budget.kind,
                     "budget_value": plan.budget.value, "seeds": list(plan.seeds),
                     "candidates": list(plan.candidates), "context": s.context, "resamples": s.resamples},
        "settings_sha256": plan.identity_sha256, "teacher": str(s.teacher),
        "interval": "Student-t over seeds: mean +- t(0.975, n-1) * sd / sqrt(n), n = seeds (95%)",
        "selection_frequency": "seed bootstrap: n seeds drawn with replacement, one draw for every layer",
        "kl": {name: {str(seed): v for seed, v in sorted(by_seed.items())} for name, by_seed in result.kl.items()},
        "ranking": [{"rank": k, "layer": u.layer, "utility": _interval(u.utility),
                     "p_selected": freq.selected[u.layer], "p_first": freq.first[u.layer],
                     "added_ms_per_token": _added(costs, u.layer, LATENCY),
                     "added_memory_bytes": _added(costs, u.layer, MEMORY)}
                    for k, u in enumerate(result.ranked, 1)],
        "adjacent": [_comparison(c) for c in result.adjacent],
        "boundary": [_comparison(c) for c in result.boundary], "resolved": result.resolved,
        "proposals": [{"kind": p.kind, "attention_layers": list(p.layers), "layout": p.layout,
                       "cost": asdict(p.cost), "within_budget": result.fits[p.kind],
                       "utility_additive": _interval(p.utility), "frequency": p.frequency} for p in result.proposals],
        "sets": [{"attention_layers": list(at), "frequency": f} for at, f in freq.sets],
        "cost": {"label": costs.label, "note": costs.note, "context": costs.context, "linear": asdict(costs.linear)},
        "evaluation": result.evaluation, "seconds": result.seconds,
    }


def _comparison(c: Comparison) -> dict[str, Any]:
    return {"better": c.better, "worse": c.worse, "difference": _interval(c.difference), "resolved": c.resolved}


def _added(costs: LayerCosts, layer: int, kind: str) -> float | None:
    try:
        return costs.added(layer, kind)
    except (KeyError, ValueError):
        return None


# ---- place.md ------------------------------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _iv(iv: Interval | None, digits: int = 4) -> str:
    if iv is None:
        return "-"
    if iv.ci_low is None:
        return f"{iv.mean:+.{digits}f}"
    return f"{iv.mean:+.{digits}f} [{iv.ci_low:+.{digits}f}, {iv.ci_high:+.{digits}f}]"


def _where(plan, layer: int) -> str:
    n_emb = plan.teacher_config.embedding_config.num_hidden_layers
    return f"embedding {layer}" if layer < n_emb else f"LM {layer - n_emb}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.3g}"


def render_markdown(plan, result: PlaceResult) -> str:
    from mmmamba_bench.sweep.report import context_label

    s, costs, freq = plan.settings, result.costs, result.frequencies
    n, ctx = len(plan.seeds), context_label(costs.context)
    k = len(result.proposal.layers)
    linear_kl = t_interval([result.kl[BASELINE][x] for x in result.ranked[0].seeds])
    lines = [f"# Attention placement for `{Path(s.teacher).name}`: {plan.budget.label}", "",
             f"- Teacher `{s.teacher}` ({plan.num_layers} global layers, weights sha256 "
             f"`{plan.teacher_sha256[:12]}...`); recipe `{s.recipe}` (init {plan.recipe.init}).",
             f"- **Utility** of layer i = held-out KL(teacher || student) of the all-linear student minus that of the "
             f"student keeping only layer i as attention, each distilled by stage 3 alone for {plan.steps} steps "
             f"from the seeded student, same seed (same seeding and batches) for both; KL per real token on "
             f"{plan.identity['heldout']['examples']} held-out rows ({plan.identity['heldout']['source']}), rows no "
             f"run trains on.",
             f"- **Interval**: 95% Student-t over the {n} seeds {list(plan.seeds)}: mean +- t(0.975, {n - 1}) x sd / "
             f"sqrt({n}) of the per-seed utilities. A comparison of two layers uses the same interval on their "
             f"per-seed differences (paired by seed); it is **resolved** only when that interval excludes 0.",
             f"- **P(selected)** / **P(first)**: the seed bootstrap ({freq.resamples} draws of {n} seeds with "
             f"replacement, one draw for every layer): how often the budget's rule selects the layer / ranks it "
             f"first. With {n} seeds there are only {math.comb(2 * n - 1, n)} distinct draws: coarse.",
             f"- **Cost**: {costs.label} at {ctx} tokens: {costs.note}. All-linear: "
             f"{_ms(costs.linear.decode_ms_per_token)} ms/token, {_gib(costs.linear.memory_bytes)} GiB.",
             f"- All-linear held-out KL: {_iv(linear_kl)}.", ""]
    lines += ["## Ranking", "",
              f"| rank | layer | where | utility (KL drop) [95% CI] | per seed | P(selected) | P(first) | "
              f"vs next [95% CI] | + ms/token @{ctx} | + GiB @{ctx} |", "|---|---|---|---|---|---|---|---|---|---|"]
    nxt = {c.better: c for c in result.adjacent}
    for rank, u in enumerate(result.ranked, 1):
        c = nxt.get(u.layer)
        vs = "-" if c is None else f"{_iv(c.difference)} {'resolved' if c.resolved else 'not resolved'}"
        lines.append(f"| {rank} | {u.layer} | {_where(plan, u.layer)} | {_iv(u.utility)} | "
                     f"{', '.join(f'{v:+.4f}' for v in u.utility.values)} | {freq.selected[u.layer]:.2f} | "
                     f"{freq.first[u.layer]:.2f} | {vs} | {_ms(_added(costs, u.layer, LATENCY))} | "
                     f"{_gib(_added(costs, u.layer, MEMORY))} |")
    lines += ["", *_summary(plan, result), ""]
    lines += ["## Proposals", "",
              f"| proposal | attention at | layout | ms/token @{ctx} | GiB @{ctx} | fits the budget | additive utility "
              f"[95% CI] | P(exactly this set) |", "|---|---|---|---|---|---|---|---|"]
    for p in result.proposals:
        fit = result.fits[p.kind]
        lines.append(f"| {p.kind} | {', '.join(map(str, p.layers)) or 'none'} | `{p.layout}` | "
                     f"{_ms(p.cost.decode_ms_per_token)} | {_gib(p.cost.memory_bytes)} | "
                     f"{'-' if fit is None else 'yes' if fit else 'no'} | {_iv(p.utility)} | {p.frequency:.2f} |")
    lines += ["", "The additive utility sums the single-layer utilities per seed; whether attention layers add up is "
              "not measured by the search (the evaluation below builds the layouts).", ""]
    lines += _evaluation_section(result.evaluation, k)
    secs = result.seconds
    lines += ["## How this was made", "",
              f"`mmmamba-bench place` ({len(result.kl)} layouts x {n} seeds; per run "
              f"`runs/<layout>/seed<s>/done.json`; "
              f"settings, hashes and every run's time in `search.json`; these numbers in `place.json`). Run time: "
              f"{secs.get('runs', 0):.0f} s in the runs (all invocations)"
              + (f", {secs['evaluate_this_invocation']:.0f} s in the evaluation" if "evaluate_this_invocation" in secs
                 else "") + f"; this invocation {secs.get('this_invocation', 0):.0f} s.", ""]
    return "\n".join(lines)


def _summary(plan, result: PlaceResult) -> list[str]:
    first = result.ranked[0]
    top = result.adjacent[0] if result.adjacent else None
    out = []
    if top is not None:
        out.append(f"- Layer {first.layer} ranks first: "
                   + (f"**resolved** against layer {top.worse} ({_iv(top.difference)})." if top.resolved else
                      f"**not resolved**: its difference from layer {top.worse} is {_iv(top.difference)}, an "
                      f"interval that contains 0."))
    chosen = result.proposal.layers
    if result.boundary:
        unresolved = [c for c in result.boundary if not c.resolved]
        if not unresolved:
            out.append(f"- The proposal ({', '.join(map(str, chosen))}) is **resolved**: each proposed layer's "
                       f"utility is above each left-out candidate's, every paired interval excluding 0.")
        else:
            pairs = ", ".join(f"{c.better} vs {c.worse}" for c in unresolved[:6])
            more = f" and {len(unresolved) - 6} more" if len(unresolved) > 6 else ""
            out.append(f"- The proposal ({', '.join(map(str, chosen)) or 'none'}) is **not resolved**: "
                       f"{len(unresolved)} of {len(result.boundary)} proposed-vs-left-out pairs have intervals "
                       f"containing 0 ({pairs}{more}); another set of seeds could choose differently "
                       f"(P(exactly this set) = {result.proposal.frequency:.2f}).")
    return out


def _evaluation_section(ev: dict[str, Any] | None, k: int) -> list[str]:
    out = ["## Evaluation (`--evaluate`)", ""]
    if ev is None:
        return out + ["_Not run: pass `--evaluate` to distil and score the proposal beside head-interleaved._", ""]
    cap = f", every stage capped at {ev['max_steps']} steps" if ev.get("max_steps") else ""
    out += [f"Both layouts distilled by the sweep with the full recipe (stages 1-3{cap}, the recipe's seed) and "
            f"scored on {', '.join(ev['tasks'])}; quality with its 95% bootstrap interval over documents "
            f"(`{Path(ev['folder']).name}/report.md`).", "",
            "| layout | attention at | quality [95% CI] | ms/token | GiB | run time s |", "|---|---|---|---|---|---|"]
    for role, c in ev["configs"].items():
        out.append(f"| {role}: `{c['name']}` | {', '.join(map(str, c['attention_layers'])) or 'none'} | "
                   f"{c['quality']:.1f} [{c['quality_ci_low']:.1f}, {c['quality_ci_high']:.1f}] | "
                   f"{_ms(c['ms_per_token'])} | {_gib(c['memory_bytes'])} | {c['seconds']:.0f} |")
    d = ev.get("difference")
    if d is None:
        out += ["", f"The search proposes the paper's head-interleaved layout itself (K = {k}): nothing to compare.",
                ""]
    else:
        meaning = {"holds": "the proposal is better", "reversed": "head-interleaved is better"}.get(
            ev["verdict"], "no ordering is claimed")
        out += ["", f"Proposal minus head-interleaved: {d['value']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] "
                    f"(paired cluster bootstrap, {d['resamples']} resamples): **{ev['verdict']}** ({meaning}).", ""]
    return out


def write_place(out: Path, plan, result: PlaceResult) -> Path:
    """Render both files, then write each atomically; returns ``out/place.md``."""
    payload = to_json(plan, result)
    markdown = render_markdown(plan, result)
    write_json_atomic(Path(out) / PLACE_JSON, payload)
    with atomic_write(Path(out) / PLACE_MD) as f:
        f.write(markdown)
    return Path(out) / PLACE_MD
