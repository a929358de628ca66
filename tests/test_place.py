"""``mmmamba-bench place``: the interval and selection statistics on hand-made numbers, the budget rules, the paired
seeding, and the search end to end on a tiny teacher in which only one layer's attention carries information: ranked
first with an interval above 0, interrupted and resumed without redoing a finished run; bad input refused in one line
before any work."""

from __future__ import annotations

import json
import math

import pytest

from mmmamba_bench.sweep.budget import (LATENCY, LAYERS, MEMORY, Budget, BudgetError, LayerCosts, check_reachable,
                                        parse_budget, select)
from mmmamba_bench.sweep.cost import GIB, CostRow
from mmmamba_bench.sweep.ranking import (LayerUtility, adjacent_comparisons, selection_frequencies, t_interval,
                                         t_quantile, utilities)

# ---- statistics ----------------------------------------------------------------------------------------------------

def test_t_quantiles_and_the_interval_over_seeds():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert t_quantile(0.975, 9) == pytest.approx(2.2622, abs=1e-3)
    iv = t_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert iv.mean == pytest.approx(7 / 3) and iv.sd == pytest.approx(sd)
    assert iv.ci_high - iv.mean == pytest.approx(4.3027 * sd / math.sqrt(3), abs=1e-3)
    assert iv.excludes_zero is False  # [-1.5, 6.1]: three positive seeds, still not resolved
    assert t_interval([5.0]).ci_low is None and not t_interval([5.0]).excludes_zero


def test_utilities_are_paired_by_seed_and_ranked():
    kl = {"linear": {0: 1.0, 1: 2.0, 2: 3.0},
          "attn-0": {0: 0.9, 1: 1.9, 2: 2.9},  # 0.1 at every seed: a tight interval although KL varies by seed
          "attn-1": {0: 0.5, 1: 2.0, 2: 2.0},  # 0.5, 0.0 (seeds 0, 1): a higher mean, a wide interval
          "attn-2": {0: 1.0, 1: 2.0}}  # seed 2 missing: seed 2 is left out of every layer's utility
    ranked = utilities(kl, "linear", {0: "attn-0", 1: "attn-1", 2: "attn-2"})
    assert [u.layer for u in ranked] == [1, 0, 2] and ranked[0].seeds == (0, 1)
    assert ranked[1].utility.values == pytest.approx((0.1, 0.1)) and ranked[1].utility.excludes_zero
    (c10, c02) = adjacent_comparisons(ranked)
    assert (c10.better, c10.worse) == (1, 0) and not c10.resolved  # 0.4, -0.1
    assert (c02.better, c02.worse) == (0, 2) and c02.resolved  # 0.1, 0.1: identical differences


def test_selection_frequencies_follow_the_seed_draws():
    def u(layer, *values):
        return LayerUtility(layer, t_interval(values), tuple(range(len(values))))

    ranked = [u(5, 3.0, 3.0, 3.0), u(1, 2.0, 0.0, 2.5), u(2, 1.0, 1.0, 1.0)]
    freq = selection_frequencies(ranked, lambda d: select(Budget(LAYERS, 1, "1"), d, None), resamples=3000)
    assert freq.selected == {5: 1.0, 1: 0.0, 2: 0.0} and freq.first[5] == 1.0 and freq.sets == [((5,), 1.0)]
    two = selection_frequencies(ranked, lambda d: select(Budget(LAYERS, 2, "2"), d, None), resamples=3000)
    # layer 1 (2.0, 0.0, 2.5) loses to layer 2 (1.0 at every seed) when its mean over the draw is below 1: seed 1
    # drawn three times, or twice with seed 0 or seed 2 (3 + 3 orders): 7 of the 27 equally likely ordered draws
    p_lose = 7 / 27
    assert two.selected[5] == 1.0 and two.selected[2] == pytest.approx(p_lose, abs=0.03)
    assert two.selected[1] == pytest.approx(1 - p_lose, abs=0.03) and two.sets[0][0] == (1, 5)


# ---- budgets -------------------------------------------------------------------------------------------------------

def test_budget_forms_and_errors():
    assert parse_budget("2") == Budget(LAYERS, 2, "2")
    assert parse_budget("0.35ms") == Budget(LATENCY, 0.35, "0.35ms")
    assert parse_budget("6GiB") == Budget(MEMORY, 6 * GIB, "6GiB") and parse_budget("8GB").value == 8e9
    for bad in ("lots", "2.5", "-1", "3 layers"):
        with pytest.raises(BudgetError, match="--budget"):
            parse_budget(bad)


def _costs() -> LayerCosts:
    def row(ms, gib):
        return CostRow(1024, ms, int(gib * GIB))

    # layer 0 cheap, layers 1 and 2 dear (e.g. a wider stack)
    return LayerCosts("modelled (test)", "", 1024, row(1.0, 1.0), {0: row(1.1, 1.1), 1: row(1.5, 1.5),
                                                                   2: row(1.5, 1.5)})


def test_cost_budgets_take_utility_per_cost_while_it_fits():
    costs = _costs()
    utility = {0: 0.3, 1: 0.9, 2: -0.1}
    assert select(Budget(LAYERS, 2, "2"), utility, costs) == (0, 1)
    # per ms: layer 0 3.0, layer 1 1.8; layer 2 hurts and is never taken
    assert select(Budget(LATENCY, 1.6, "1.6ms"), utility, costs) == (0, 1)
    assert select(Budget(LATENCY, 1.55, "1.55ms"), utility, costs) == (0,)  # 0 first (per cost), then 1 does not fit
    assert select(Budget(LATENCY, 1.5, "1.5ms"), {0: 0.01, 1: 0.9, 2: 0.0}, costs) == (1,)
    assert select(Budget(MEMORY, 1.05 * GIB, "x"), utility, costs) == ()
    assert costs.estimate([0, 1], LATENCY) == pytest.approx(1.6)
    with pytest.raises(BudgetError, match="the all-linear student alone needs 1 ms/token"):
        check_reachable(Budget(LATENCY, 0.5, "0.5ms"), costs)


def test_modelled_cost_adds_up_layer_by_layer():
    """The selection's additive cost is exact for the bandwidth floor: weights, states and KV cache per layer."""
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.sweep.cost import GPUS, modelled_cost

    config = ChatConfig.from_json_file(resolve_model("demo-teacher") / "config.json")
    n = config.num_layers

    def cost(at):
        types = ["mha" if i in at else "mamba2" for i in range(n)]
        return modelled_cost(config.with_block_types(types), [4096], GPUS["rtx4090"]).rows[0]

    lin, a, b, both = cost(()), cost((1,)), cost((4,)), cost((1, 4))
    assert both.decode_ms_per_token == pytest.approx(a.decode_ms_per_token + b.decode_ms_per_token
                                                     - lin.decode_ms_per_token, rel=1e-12)
    assert both.memory_bytes == a.memory_bytes + b.memory_bytes - lin.memory_bytes


# ---- the search end to end -----------------------------------------------------------------------------------------

MATTERS = 2  # global layer 2, the language model's first: not the first layer, so ties cannot put it first


@pytest.fixture(scope="module")
def one_layer_teacher(tiny_teacher, tmp_path_factory):
    """The tiny teacher with every attention output projection zeroed except layer MATTERS's (scaled x4), and the LM
    head scaled x20 so its logits are far from uniform: only layer MATTERS's attention reaches the output."""
    import torch

    from mmmamba_bench.checkpoint import load_model, save_model

    model = load_model(tiny_teacher)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.attention.wo.weight.mul_(4.0 if i == MATTERS else 0.0)
        model.language_model.output.weight.mul_(20.0)
    return save_model(model, tmp_path_factory.mktemp("place") / "teacher", side_files_from=tiny_teacher)


@pytest.fixture
def recipe_file(tmp_path):
    import yaml

    from tests.test_distill import TINY_DISTILL

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(TINY_DISTILL))
    return path


def test_paired_seeding_differs_from_the_linear_student_only_in_the_kept_layer(one_layer_teacher, tmp_path):
    from mmmamba_bench.checkpoint import read_state_dict
    from mmmamba_bench.sweep.utility import search_runs, seed_paired
    from mmmamba_bench.train.recipe import DistillRecipe, as_recipe
    from mmmamba_bench.train.state import read_stage_record
    from tests.test_distill import TINY_DISTILL

    recipe = as_recipe({**TINY_DISTILL, "seed": 7}, DistillRecipe)
    linear, _, _, kept, _ = search_runs((0, 1, 2, 3), (7,), 4, "mimic")
    assert (linear.name, kept.name, kept.layer) == ("linear", "attn-2", 2)
    states = {}
    for run in (linear, kept):
        seeded = seed_paired(run, recipe, one_layer_teacher, "sha", tmp_path / run.name / "model")
        assert seeded == tmp_path / run.name / "model.stages" / "seeded"
        assert read_stage_record(seeded)["seed"] == 7
        states[run.name] = read_state_dict(seeded)
    a, b = states["linear"], states["attn-2"]
    assert {k for k in a if k not in b} == {k for k in a if k.startswith("language_model.model.layers.0.attention.")}
    assert all((a[k] == b[k]).all() for k in a if k in b)  # layer 1's and 3's draws: the same as linear's
    # the library's own seeding draws layer 3's gate rows after layer 2's: keeping layer 2 shifts them
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.seeding import seed_state_dict

    config = ChatConfig.from_json_file(one_layer_teacher / "config.json")
    _, plain = seed_state_dict(config, read_state_dict(one_layer_teacher), list(kept.config.block_types), seed=7)
    name = "language_model.model.layers.1.attention.wvkqgdt.weight"
    assert not (plain[name] == a[name]).all()


class Interrupted(Exception):
    pass


def test_search_ranks_the_layer_that_matters_first_and_resumes(one_layer_teacher, tiny_data, recipe_file, tmp_path,
                                                               monkeypatch, capsys):
    """4 layers x 3 seeds + the all-linear baseline, 2 stage-3 steps each: cut during the 4th run, resumed by the
    CLI (the 3 finished runs not redone), layer MATTERS ranked first with its interval above 0 and every other
    layer's utility 0 (the paired seeding); a third invocation redoes nothing; other settings are refused."""
    from mmmamba_bench.cli import main
    from mmmamba_bench.sweep.place import PlaceSettings, run_place
    from mmmamba_bench.train import distill as distill_module

    out = tmp_path / "place"
    real = distill_module.distill
    calls: list[str] = []

    def cut_fourth(recipe, teacher, out_dir, *args, **kwargs):
        calls.append(f"{out_dir.parent.parent.name}/{out_dir.parent.name}")
        if len(calls) == 4:
            raise Interrupted
        return real(recipe, teacher, out_dir, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", cut_fourth)
    settings = PlaceSettings(teacher=one_layer_teacher, recipe=recipe_file, budget="1", steps=2, heldout=16,
                             context=1024, data=tiny_data, device="cpu", progress=False, resamples=500)
    with pytest.raises(Interrupted):
        run_place(settings, out)
    assert calls == ["linear/seed0", "attn-0/seed0", "attn-1/seed0", "attn-2/seed0"]
    manifest = json.loads((out / "search.json").read_text())
    assert manifest["runs"]["attn-1/seed0"]["status"] == "done"
    assert manifest["runs"]["attn-2/seed0"]["status"] == "interrupted"
    first = out / "runs" / "linear" / "seed0" / "done.json"
    stamp = first.stat().st_mtime_ns
    assert not (out / "runs" / "linear" / "seed0" / "model").exists()  # weights removed once recorded

    def spy(recipe, teacher, out_dir, *args, **kwargs):
        calls.append(f"{out_dir.parent.parent.name}/{out_dir.parent.name}")
        return real(recipe, teacher, out_dir, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", spy)
    calls.clear()

    def argv(steps: int = 2) -> list[str]:
        return ["place", "--teacher", str(one_layer_teacher), "--budget", "1", "--recipe", str(recipe_file),
                "--out", str(out), "--steps", str(steps), "--heldout", "16", "--context", "1k", "--data",
                str(tiny_data), "--device", "cpu", "--no-progress"]

    assert main(argv()) == 0
    assert len(calls) == 12 and not {"linear/seed0", "attn-0/seed0", "attn-1/seed0"} & set(calls)
    assert calls[0] == "attn-2/seed0" and first.stat().st_mtime_ns == stamp

    place = json.loads((out / "place.json").read_text())
    ranking = place["ranking"]
    top = ranking[0]
    assert top["layer"] == MATTERS and top["p_first"] == 1.0 and top["p_selected"] == 1.0
    assert top["utility"]["ci_low"] > 0 and len(top["utility"]["per_seed"]) == 3
    assert all(u > 0.05 for u in top["utility"]["per_seed"])
    assert all(abs(v) < 1e-6 for r in ranking[1:] for v in r["utility"]["per_seed"])  # paired: exactly the linear run
    assert place["resolved"] and place["adjacent"][0]["resolved"]
    (search, paper) = place["proposals"]
    assert search["kind"] == "search" and search["attention_layers"] == [MATTERS]
    assert paper["kind"] == "head-interleaved" and paper["attention_layers"] == [0]
    assert search["cost"]["decode_ms_per_token"] > place["cost"]["linear"]["decode_ms_per_token"]
    assert place["cost"]["label"] == "modelled (NVIDIA GeForce RTX 4090 24GB)" and place["evaluation"] is None
    report = (out / "place.md").read_text()
    assert f"Layer {MATTERS} ranks first: **resolved**" in report and "t(0.975, 2)" in report

    # a third invocation with a layer budget of 2: every run finished, nothing distilled, the proposal re-derived:
    # the second layer is a tie of zeros (lowest index first), which no interval resolves
    calls.clear()
    assert main([*argv(), "--budget", "2"]) == 0 and calls == []
    again = json.loads((out / "place.json").read_text())
    assert again["proposals"][0]["attention_layers"] == [0, MATTERS] and not again["resolved"]
    # other settings in the same folder: refused before any work, naming what differs
    capsys.readouterr()
    assert main(argv(steps=3)) == 2 and calls == []
    assert "holds a placement search with other settings (stage3_steps differ)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--budget", "7"], "--budget 7: 7 attention layers, but the teacher has 6 layers"),
    (["--budget", "3", "--layers", "0,1"], "--budget 3: 3 attention layers, but --layers names 2 candidate layers"),
    (["--budget", "lots"], "--budget 'lots': expected a number of attention layers"),
    (["--gpu", "a100"], "--gpu 'a100': unknown GPU; choose from h100, h200, h200-measured, rtx4090"),
    (["--seeds", "1"], "--seeds 1: the ranking's interval needs at least 2 seeds"),
    (["--layers", "0,9"], "--layers [0, 9]: need distinct global layer indices in 0..5 ([9] out of range)"),
    (["--budget", "0.000001ms"], "--budget 0.000001ms: the all-linear student alone needs"),
    (["--context", "lots"], "--context: not a context length: 'lots'"),
    (["--cost", "measured"], "--cost measured needs a CUDA GPU"),
    (["--evaluate", "--tasks", "mini_mme"], "MME's score is left out of it"),
])
def test_cli_refuses_a_bad_search_in_one_line_before_any_work(tiny_data, tmp_path, capsys, extra, message):
    from mmmamba_bench.assets import recipes_dir
    from tests.helpers import assert_cli_refuses_in_one_line

    argv = ["place", "--teacher", "demo-teacher", "--budget", "2", "--recipe", str(recipes_dir() / "linear-demo.yaml"),
            "--out", str(tmp_path / "out"), "--data", str(tiny_data)]
    if "--budget" in extra:
        i = argv.index("--budget")
        del argv[i:i + 2]
    assert_cli_refuses_in_one_line(argv, extra, message, capsys, tmp_path / "out")
