"""``mmmamba-bench sweep``: presets scaled to a teacher's depth, the cost model against the profiler's floor
arithmetic, verdicts and Pareto fronts on hand-made numbers, and a sweep end to end on the tiny teacher: interrupted,
resumed without redoing finished configurations, reported (table, CSV, both plots)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from mmmamba_bench.sweep.configs import (PLACEMENTS, PaperRef, SweepConfigError, configs_from_layouts, expand_preset,
                                         match_paper, placement)
from mmmamba_bench.sweep.verdicts import HOLDS, NOT_RESOLVED, REVERSED, Ordering, judge, paper_orderings, verdict

# ---- presets -----------------------------------------------------------------------------------------------------

def _at(configs) -> dict[str, tuple[int, ...]]:
    return {c.name: c.attention_layers for c in configs}


def test_table5_counts_capped_and_deduplicated_for_6_and_32_layers():
    six = expand_preset("paper-table5", 6)
    assert _at(six) == {"attn0": (), "attn1": (0,), "attn2": (0, 3), "attn4": (0, 1, 3, 4), "attn6": tuple(range(6))}
    assert [c.build for c in six] == ["distilled"] * 4 + ["teacher"]  # all attention: the teacher itself
    assert [c.paper for c in six][-1] == (PaperRef(5, "32 (HoVLE)"),) and six[2].paper == (PaperRef(5, "2"),)
    big = expand_preset("paper-table5", 32)
    assert [c.name for c in big] == ["attn0", "attn1", "attn2", "attn4", "attn8", "attn32"]
    assert big[4].layout == "head-interleaved:4" and big[4].attention_layers == tuple(range(0, 32, 4))  # mmMamba-hybrid
    assert big[0].layout == "linear" and big[-1].layout == "transformer"
    assert [c.paper[0].setting for c in big] == ["0", "1", "2", "4", "8", "32 (HoVLE)"]


def test_table6_places_the_same_k_four_ways():
    big = expand_preset("paper-table6", 32)
    assert {c.name: c.layout for c in big} == {"head-stacked-8": "head-stacked:8", "tail-stacked-8": "tail-stacked:8",
                                               "tail-interleaved-8": "tail-interleaved:4",
                                               "head-interleaved-8": "head-interleaved:4"}
    assert [c.paper[0].setting for c in big] == list(PLACEMENTS)
    six = expand_preset("paper-table6", 6)  # K = round(6 / 4) = 2
    assert _at(six) == {"head-stacked-2": (0, 1), "tail-stacked-2": (4, 5), "tail-interleaved-2": (2, 5),
                        "head-interleaved-2": (0, 3)}
    assert all(len(set(c.attention_layers)) == 2 for c in six)
    # K = 1: head-stacked and head-interleaved are one layout, built once and standing for both rows
    one = expand_preset("paper-table6", 6, attention_layers=1)
    assert _at(one) == {"head-stacked-1": (0,), "tail-stacked-1": (5,)}
    assert [r.setting for r in one[0].paper] == ["head-stacked", "head-interleaved"]
    with pytest.raises(SweepConfigError, match="between 1 and 5"):
        expand_preset("paper-table6", 6, attention_layers=6)


def test_tables_3_and_4_and_bad_presets():
    t3 = expand_preset("paper-table3", 6)
    assert [c.stages_label for c in t3] == ["none", "S1", "S2", "S3", "S1+S2", "S1+S3", "S2+S3", "S1+S2+S3"]
    assert t3[0].build == "seeded" and all(c.build == "distilled" for c in t3[1:])
    assert [c.allow_skip for c in t3] == [False, False, True, True, False, True, True, False]
    assert all(c.layout == "linear" and c.paper[0].table == 3 for c in t3)
    t4 = expand_preset("paper-table4", 32)
    assert [(c.init, c.paper[0].setting) for c in t4] == [("scratch", "scratch"), ("inherit", "inherit W_QKV"),
                                                         ("mimic", "inherit W_QKV + mimic")]
    hybrid = expand_preset("paper-table4", 6, base_layout="hybrid")
    assert all(c.paper == () and c.attention_layers == (0, 4) for c in hybrid)  # not the paper's linear: no row
    with pytest.raises(SweepConfigError, match="unknown --preset"):
        expand_preset("paper-table7", 6)
    with pytest.raises(SweepConfigError, match="chooses its own layouts"):
        expand_preset("paper-table5", 6, base_layout="linear")


def test_user_layouts_names_duplicates_and_paper_rows():
    configs = configs_from_layouts(["linear", "hybrid", "mha,mamba2,mamba2,mha,mamba2,mamba2"], 6)
    assert [c.name for c in configs] == ["linear", "hybrid", "attn-at-0-3"]
    with pytest.raises(SweepConfigError, match="same layout as 'hybrid'"):
        configs_from_layouts(["hybrid", "head-interleaved:4"], 6)
    with pytest.raises(SweepConfigError, match="--layouts"):
        configs_from_layouts(["head-stacked:9"], 6)
    hybrid32 = tuple("mha" if i in placement("head-interleaved", 8, 32) else "mamba2" for i in range(32))
    assert match_paper(hybrid32) == (PaperRef(5, "8"), PaperRef(6, "head-interleaved"))
    assert match_paper(("mamba2",) * 6) == (PaperRef(5, "0"),) and match_paper(("mha", "mamba2")) == ()


# ---- cost --------------------------------------------------------------------------------------------------------

def test_floor_model_equals_the_profilers_floor_arithmetic():
    import torch

    from mmmamba_bench.config import preset
    from mmmamba_bench.profiler import floor as fl
    from mmmamba_bench.profiler.run import ProfileSettings, profile_context
    from mmmamba_bench.sweep.cost import GIB, GPUS, cache_bytes, modelled_cost, parameter_count
    from tests.helpers import random_model

    h200 = GPUS["h200-measured"]
    for kind in ("linear", "hybrid", "transformer"):  # the profiler's own row: same bytes, same floor
        model = random_model(kind, dtype=torch.float32)
        row = profile_context(model, kind, 24, "optimized", ProfileSettings(steps=1, warmup=0, impl="torch",
                                                                            bandwidth=h200.bandwidth_bytes_per_s))
        (mine,) = modelled_cost(model.config, [row.extra["kv_len"]], h200).rows
        assert mine.bytes_per_step == row.bytes_per_step and mine.decode_ms_per_token == row.floor_ms
        weights = 2 * sum(p.numel() for p in model.parameters())  # bf16
        assert mine.memory_bytes == weights + cache_bytes(model.config, row.extra["kv_len"])
    for name in ("mmmamba-linear", "mmmamba-hybrid", "hovle-2.6b"):
        cfg = preset(name)
        cost = modelled_cost(cfg, [1024, 105472, 131072], h200)
        for r in cost.rows:
            assert r.decode_ms_per_token == fl.floor_ms(fl.step_bytes(cfg, r.context).total, 4.07e12)
        assert cost.label == "modelled (NVIDIA H200 141GB (measured copy bandwidth))"
    # performance_notes.md: the linear floor at the H200's measured 4.07 TB/s is 1.165 ms at any context
    linear = modelled_cost(preset("mmmamba-linear"), [1024, 131072], h200).rows
    assert [round(r.decode_ms_per_token, 3) for r in linear] == [1.166, 1.166]
    assert parameter_count(preset("hovle-2.6b")) == pytest.approx(2.606e9, rel=1e-3)
    # HoVLE's KV cache at 1M tokens does not fit a 24 GB RTX 4090: marked, with what it would need
    (big,) = modelled_cost(preset("hovle-2.6b"), [1024 * 1024], GPUS["rtx4090"]).rows
    assert big.status == "oom" and big.memory_bytes > 24 * GIB


# ---- verdicts, Pareto --------------------------------------------------------------------------------------------

def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(0.4, 3.0) == HOLDS
    assert verdict(-3.0, -0.1) == REVERSED
    assert verdict(-0.5, 2.0) == NOT_RESOLVED == "not resolved: intervals overlap"
    assert verdict(0.0, 0.0) == NOT_RESOLVED  # identical runs: no ordering
    with pytest.raises(ValueError):
        verdict(1.0, -1.0)

    o = Ordering(5, "a", "b", "2", "1", 71.5, 70.9)
    intervals = {("a", "b"): (1.5, 1.0, 2.0), ("c", "b"): (-1.2, -2.0, -0.3), ("a", "c"): (0.5, -0.4, 1.3)}
    seen = []

    def difference(better, worse, confidence):
        seen.append(confidence)
        return intervals[(better, worse)]

    judged = judge([o, Ordering(5, "c", "b", "4", "1", 73.7, 70.9), Ordering(5, "a", "c", "2", "4", 1, 0)],
                   difference)
    assert [j.verdict for j in judged] == [HOLDS, REVERSED, NOT_RESOLVED]
    assert seen == [pytest.approx(1 - 0.05 / 3)] * 3  # Bonferroni over the report's orderings


def test_paper_orderings_follow_the_papers_numbers():
    from mmmamba_bench.report.paper import load_ablations

    rows = {(r.table, r.setting): r.scores for r in load_ablations()}
    t5 = paper_orderings(expand_preset("paper-table5", 6), rows)
    assert [(o.better, o.worse) for o in t5] == [("attn1", "attn0"), ("attn2", "attn1"), ("attn4", "attn2"),
                                                ("attn6", "attn4")]
    assert t5[0].paper_better == pytest.approx((85.5 + 48.0 + 79.3) / 3)
    t3 = paper_orderings(expand_preset("paper-table3", 6), rows)
    assert len(t3) == 7 and {o.better for o in t3} == {"stages-S1+S2+S3"}
    assert math.isnan(next(o for o in t3 if o.worse == "stages-none").paper_worse)  # "-" in the paper: the worse
    t6 = paper_orderings(expand_preset("paper-table6", 6), rows)
    assert {(o.better, o.worse) for o in t6} == {("head-interleaved-2", x) for x in
                                                 ("head-stacked-2", "tail-stacked-2", "tail-interleaved-2")}
    assert paper_orderings(expand_preset("paper-table6", 6, attention_layers=1), rows) == [
        Ordering(6, "head-stacked-1", "tail-stacked-1", "head-interleaved", "tail-stacked",
                 pytest.approx((86.7 + 55.1 + 86.9) / 3), pytest.approx((85.9 + 53.7 + 79.4) / 3))]
    # where the paper's numbers order a claimed pair the other way, the ordering follows the numbers
    swapped = {**rows, (5, "1"): {"MME": 1.0, "POPE": 1.0, "TQA": 1.0, "SQA-I": 1.0}}
    first = paper_orderings(expand_preset("paper-table5", 6), swapped)[0]
    assert (first.better, first.worse) == ("attn0", "attn1")


def test_pareto_front_keeps_the_non_dominated():
    from mmmamba_bench.sweep.report import pareto_front

    points = {"cheap": (50.0, 1.0), "good": (70.0, 3.0), "dominated": (60.0, 3.5), "tie": (70.0, 3.0),
              "best": (80.0, 9.0), "no-cost": (99.0, None), "same-cost-worse": (40.0, 1.0)}
    assert pareto_front(points) == {"cheap", "good", "tie", "best"}


def test_pareto_plot_marks_the_front_and_configurations_out_of_memory():
    from mmmamba_bench.sweep.plots import Point, plot_pareto

    fig = plot_pareto([Point("a", 50, 45, 55, 1.0, on_front=True), Point("b", 60, 52, 68, 2.0, on_front=True),
                       Point("c", 40, 30, 50, 3.0), Point("d", 90, 85, 95, 9.0, fits=False), Point("e", 1, 0, 2, None)],
                      "ms", "t")
    gids = {a.get_gid() for a in fig.axes[0].get_children()}
    assert {"config:a", "config:b", "config:c", "oom:d", "front"} <= gids and "config:e" not in gids
    (front,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == "front"]
    assert list(front.get_xdata()) == [1.0, 2.0] and list(front.get_ydata()) == [50, 60]


def test_quality_columns_mean_and_bootstrap_interval():
    from statistics import mean

    from mmmamba_bench.sweep.quality import (QualityError, check_quality_tasks, cluster_bootstrap, columns_for,
                                             quality_metric)

    cols = columns_for(["mini_mme", "mini_sqa", "mini_pope"])
    assert [(c.name, c.in_mean) for c in cols] == [("MME", False), ("POPE", True), ("SQA-I", True)]
    assert [c.name for c in columns_for(["paper_pope_adv", "paper_pope_pop"])] == [
        "POPE (paper_pope_adv, paper_pope_pop)"]
    with pytest.raises(QualityError, match="MME's score is left out"):
        check_quality_tasks(["mini_mme"])
    # 400 independent 0/1 answers, half right: 50 with a 95% interval of about +-4.9 (binomial normal approximation)
    sqa = [c for c in cols if c.name == "SQA-I"]
    metric = quality_metric(sqa, {"mini_sqa": {"accuracy": mean}})
    records = [("mini_sqa", i % 2) for i in range(400)]
    value, low, high = cluster_bootstrap(records, [("mini_sqa", i) for i in range(400)], metric, resamples=2000)
    assert value == 50.0 and 44.0 < low < 46.5 and 53.5 < high < 56.0
    # the same answers in 40 clusters of 10 equal ones: far fewer independent units, a wider interval
    _, low_c, high_c = cluster_bootstrap(records, [("mini_sqa", i % 40) for i in range(400)], metric,
                                         resamples=2000)
    assert high_c - low_c > 2 * (high - low)


@pytest.mark.slow
def test_quality_from_samples_equals_lmms_evals_scores_and_orders_a_degraded_copy():
    """The committed CI baseline (the embedded teacher on the whole mini-suite): each column recomputed from the
    per-sample logs is lmms-eval's own aggregate, the quality is the demo report's avg (75.5); a copy with every
    ScienceQA answer wrong is judged worse (holds), the run against itself not ordered."""
    import dataclasses
    from pathlib import Path
    from statistics import mean

    from mmmamba_bench.benchmarks import MINI_TASKS
    from mmmamba_bench.sweep.quality import aggregations, columns_for, load_samples, paired_difference, quality

    baseline = Path(__file__).resolve().parents[1] / "reports" / "baselines" / "demo-teacher-mini"
    cols, aggs = columns_for(MINI_TASKS), aggregations(MINI_TASKS)
    samples = load_samples(baseline, cols)
    q = quality(samples, cols, aggs, resamples=300)
    results = json.loads(samples.run.results_file.read_text())["results"]
    for c in cols:
        (task,) = c.tasks
        assert q.columns[c.name] == pytest.approx(results[task][f"{c.metric},none"] * c.scale), c.name
    assert q.value == pytest.approx(mean(v for n, v in q.columns.items() if n != "MME")) and round(q.value, 1) == 75.5
    assert q.ci_low < q.value < q.ci_high and q.documents == 1260
    same = paired_difference(samples, samples, cols, aggs, resamples=300)
    assert verdict(same.ci_low, same.ci_high) == NOT_RESOLVED
    wrong = dataclasses.replace(samples, records=[(t, 0 if t == "mini_sqa" else v) for t, v in samples.records])
    worse = paired_difference(samples, wrong, cols, aggs, resamples=300)
    assert worse.difference == pytest.approx(q.columns["SQA-I"] / 6) and verdict(worse.ci_low, worse.ci_high) == HOLDS


@pytest.mark.parametrize("extra, message", [
    ([], "give --layouts L1 L2 ... or --preset"),
    (["--layouts", "linear", "head-stacked:9"], "--layouts: layout 'head-stacked:9': 9 is out of range for 6 layers"),
    (["--layouts", "hybrid", "head-interleaved:4"], "--layouts: 'head-interleaved:4' is the same layout as 'hybrid'"),
    (["--preset", "paper-table5", "--layouts", "linear"], "paper-table5 chooses its own layouts"),
    (["--preset", "paper-table5", "--attention-layers", "2"], "--attention-layers goes with --preset paper-table6"),
    (["--layouts", "linear", "--contexts", "1k,lots"], "--contexts / --report-context: not a context length: 'lots'"),
    (["--layouts", "linear", "--contexts", "1k", "--report-context", "2k"],
     "--report-context 2048 is not one of --contexts [1024]"),
    (["--layouts", "linear", "--cost", "measured"], "--cost measured needs a CUDA GPU"),
    (["--layouts", "linear", "--tasks", "mini_mme"], "MME's score is left out of it"),
    (["--layouts", "linear", "--teacher", "no-such-teacher"], "--teacher: no-such-teacher"),
])
def test_cli_refuses_a_bad_sweep_in_one_line_before_any_work(tmp_path, capsys, extra, message):
    from mmmamba_bench.assets import recipes_dir
    from tests.helpers import assert_cli_refuses_in_one_line

    argv = ["sweep", "--teacher", "demo-teacher", "--recipe", str(recipes_dir() / "linear-demo.yaml"), "--tasks",
            "mini_sqa", "--out", str(tmp_path / "out")]
    for flag in ("--teacher", "--tasks"):  # a flag given again replaces the default above
        if flag in extra:
            i = argv.index(flag)
            del argv[i:i + 2]
    assert_cli_refuses_in_one_line(argv, extra, message, capsys, tmp_path / "out")


# ---- end to end ----------------------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_sweep_resumes_without_redoing_and_reports(tiny_teacher, tiny_data, mini_suite, tmp_path, monkeypatch,
                                                   capsys):
    """Three layouts of the tiny teacher (linear, hybrid, the teacher itself), 2 steps per stage, 4 documents of two
    mini tasks: cut inside the hybrid's distillation, resumed by the CLI (distill is called again only for the
    hybrid, which resumes mid-stage), then the table, CSV and plots; a third run redoes nothing."""
    import yaml

    from mmmamba_bench.cli import main
    from mmmamba_bench.sweep.runner import SweepSettings, run_sweep
    from mmmamba_bench.train import distill as distill_module
    from tests.test_distill import TINY_DISTILL

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_DISTILL))
    out = tmp_path / "sweep"
    real = distill_module.distill
    calls: list[str] = []

    def cut_hybrid(recipe, teacher, out_dir, *args, **kwargs):
        calls.append(out_dir.parent.name)
        if out_dir.parent.name == "hybrid":
            def callback(step, loss):
                stages = out_dir.with_name("model.stages")
                if (stages / "stage1").exists() and not (stages / "stage2").exists() and step == 1:
                    raise Interrupted  # in stage 2, after stage 1 finished

            kwargs["callback"] = callback
        return real(recipe, teacher, out_dir, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", cut_hybrid)
    settings = SweepSettings(teacher=tiny_teacher, recipe=recipe, tasks="mini_mme,mini_sqa", contexts=(64, 1024),
                             max_steps=2, data=tiny_data, mini_data=mini_suite[0], limit=4, device="cpu",
                             resamples=1000, progress=False)
    configs = configs_from_layouts(["linear", "hybrid", "transformer"], 4)
    with pytest.raises(Interrupted):
        run_sweep(configs, settings, out)
    manifest = json.loads((out / "sweep.json").read_text())
    assert {n: e["status"] for n, e in manifest["configs"].items()} == {"linear": "done", "hybrid": "interrupted",
                                                                        "transformer": "pending"}
    assert (out / "configs" / "linear" / "done.json").is_file() and calls == ["linear", "hybrid"]
    stages = out / "configs" / "hybrid" / "model.stages"
    assert (stages / "stage1").is_dir() and any((stages / ".work" / "stage2").glob("checkpoint-*"))  # resumed there

    def spy(recipe, teacher, out_dir, *args, **kwargs):
        calls.append(out_dir.parent.name)
        return real(recipe, teacher, out_dir, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", spy)
    calls.clear()
    def argv(max_steps: int = 2) -> list[str]:
        return ["sweep", "--teacher", str(tiny_teacher), "--layouts", "linear", "hybrid", "transformer", "--recipe",
                str(recipe), "--tasks", "mini_mme,mini_sqa", "--out", str(out), "--contexts", "64,1k",
                "--max-steps", str(max_steps), "--data", str(tiny_data), "--mini-data", str(mini_suite[0]),
                "--limit", "4", "--device", "cpu", "--resamples", "1000", "--no-progress"]

    assert main(argv()) == 0
    assert calls == ["hybrid"]  # linear finished: not distilled again; the teacher is never distilled
    hybrid_stage2 = json.loads((out / "configs" / "hybrid" / "model.stages" / "stage2" / "distill_state.json")
                               .read_text())
    assert hybrid_stage2["complete"] and hybrid_stage2["steps"] == 2

    manifest = json.loads((out / "sweep.json").read_text())
    assert all(e["status"] == "done" for e in manifest["configs"].values()) and len(manifest["runs"]) == 2
    assert manifest["settings"]["max_steps"] == 2 and manifest["settings"]["cost"] == "modelled"
    assert set(manifest["configs"]["hybrid"]["seconds"]) == {"distill", "eval", "cost"}
    for name in ("report.md", "report.csv", "pareto_latency.png", "pareto_memory.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "report.csv").open() as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["linear", "hybrid", "transformer"]
    for r in rows.values():
        q, lo, hi = float(r["quality"]), float(r["quality_ci_low"]), float(r["quality_ci_high"])
        assert lo <= q <= hi and r["cost"] == "modelled (NVIDIA GeForce RTX 4090 24GB)"
        assert r["report_context"] == "1024" and float(r["ms_per_token@64"]) <= float(r["ms_per_token@1024"])
    assert rows["transformer"]["built"] == "teacher" and rows["linear"]["paper_rows"] == "T5 0"
    # the more attention, the more KV cache to read: modelled latency at 1K orders the layouts
    assert float(rows["linear"]["ms_per_token"]) < float(rows["hybrid"]["ms_per_token"]) < float(
        rows["transformer"]["ms_per_token"])
    assert rows["linear"]["pareto_latency"] == "1"  # the cheapest cannot be dominated
    report = (out / "report.md").read_text()
    assert "Table 5: 32 (HoVLE) > 0 (`transformer` > `linear`)" in report
    assert any(v in report for v in (f"**{HOLDS}**", f"**{REVERSED}**", f"**{NOT_RESOLVED}**"))

    # a third run: every configuration complete, nothing rebuilt or re-evaluated
    import mmmamba_bench.eval.runner as runner_module

    monkeypatch.setattr(runner_module, "run_eval", lambda *a, **k: pytest.fail("evaluated again"))
    calls.clear()
    assert main(argv()) == 0 and calls == []
    # other settings in the same folder: refused before any work, naming what differs
    capsys.readouterr()
    assert main(argv(max_steps=3)) == 2 and calls == []
    assert "holds a sweep with other settings (max_steps, recipe_sha256 differ)" in capsys.readouterr().err
