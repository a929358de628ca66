"""``mmmamba-bench place --evaluate``: the sweep distils and scores the proposed layout beside the paper's
head-interleaved layout with the same number of attention layers, and their paired quality difference is judged.

Both configurations are built by :func:`mmmamba_bench.sweep.runner.run_sweep` (the full recipe, every stage, the
sweep's step cap) in ``OUT/evaluate/``, a sweep folder with its own ``report.md``; the difference is the sweep's
paired cluster bootstrap over the evaluated documents (:func:`mmmamba_bench.sweep.quality.paired_difference`): one
distillation each (the recipe's seed), so the interval covers the documents, not the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmmamba_bench.sweep.configs import SweepConfig, layout_name, layout_string, match_paper, placement

PROPOSAL, PAPER = "proposal", "head-interleaved"


def evaluation_configs(layers: tuple[int, ...], num_layers: int, init: str) -> dict[str, SweepConfig]:
    """``{"proposal": ..., "head-interleaved": ...}`` (one entry when they are the same layout)."""
    k = len(layers)
    paper_at = placement("head-interleaved", k, num_layers)

    def config(at: tuple[int, ...], kind: str | None, name: str | None) -> SweepConfig:
        layout = layout_string(at, num_layers, kind)
        types = tuple("mha" if i in at else "mamba2" for i in range(num_layers))
        return SweepConfig(name or layout_name(layout, types), layout, types, init=init, paper=match_paper(types))

    paper = config(paper_at, "head-interleaved", f"head-interleaved-{k}")
    if tuple(sorted(layers)) == paper_at:
        return {PAPER: paper}
    at = tuple(sorted(layers))
    return {PROPOSAL: config(at, None, "placed-" + "-".join(map(str, at)) if at else "linear"), PAPER: paper}


def evaluate_proposal(plan, layers: tuple[int, ...], folder: Path) -> dict[str, Any]:
    """Run (or resume) the evaluation sweep; returns what ``place.json`` records of it."""
    from mmmamba_bench.sweep.quality import paired_difference
    from mmmamba_bench.sweep.report import collect
    from mmmamba_bench.sweep.runner import run_sweep
    from mmmamba_bench.sweep.verdicts import verdict

    configs = evaluation_configs(layers, plan.num_layers, plan.recipe.init)
    report = run_sweep(list(configs.values()), plan.settings.evaluate, folder)
    sweep_plan = plan.eval_plan
    results, columns, aggs = collect(list(configs.values()), sweep_plan, folder)
    by_role = {role: next(r for r in results if r.config.name == cfg.name) for role, cfg in configs.items()}
    context = sweep_plan.report_context
    out: dict[str, Any] = {
        "folder": str(folder), "report": str(report), "tasks": sweep_plan.tasks,
        "max_steps": sweep_plan.settings.max_steps, "report_context": context,
        "configs": {role: {"name": r.config.name, "layout": r.config.layout,
                           "attention_layers": list(r.config.attention_layers), "quality": r.quality.value,
                           "quality_ci_low": r.quality.ci_low, "quality_ci_high": r.quality.ci_high,
                           "cost": r.cost.label, "ms_per_token": getattr(r.cost.at(context), "decode_ms_per_token",
                                                                          None),
                           "memory_bytes": getattr(r.cost.at(context), "memory_bytes", None),
                           "seconds": r.seconds} for role, r in by_role.items()},
        "difference": None, "verdict": None,
    }
    if PROPOSAL in by_role:
        diff = paired_difference(by_role[PROPOSAL].samples, by_role[PAPER].samples, columns, aggs,
                                 resamples=sweep_plan.settings.resamples)
        out["difference"] = {"value": diff.difference, "ci_low": diff.ci_low, "ci_high": diff.ci_high,
                             "p_value": diff.p_value, "resamples": diff.resamples}
        out["verdict"] = verdict(diff.ci_low, diff.ci_high)
    return out
