"""The paper's baselines: model cards for every Table-1 / Table-2 baseline row, the Table-2 baselines built from
library classes (shapes checked against the paper's parameter counts and visual tokens), the release / best speed
variants on the tiny scale (same code path, CPU, float32), the lmms-eval dispatch, and the Table-2 ordering check."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math

import pytest
import torch

from mmmamba_bench.baselines import speed as bs
from mmmamba_bench.baselines.build import BaselineUnavailable, build_baseline
from mmmamba_bench.baselines.projectors import LDP, build_projector
from mmmamba_bench.baselines.spec import TINY_PREFIX, baseline_spec
from mmmamba_bench.cards import find_card, list_cards, load_card
from mmmamba_bench.report.paper import load_paper
from mmmamba_bench.results import SPEED_SCHEMA, SpeedRow, read_rows

PAPER = load_paper()
OURS = {"HoVLE", "mmMamba-linear", "mmMamba-hybrid"}
TABLE2_BASELINES = [p.model for p in PAPER.table2 if p.model not in OURS]
CPU_BASELINES = ["llava-phi", "mobilevlm-3b", "cobra-3.5b"]  # visualrwkv-3b needs fla (Triton only)
FLA_IMPORTS = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


def _card_for(row: str, attr: str):
    return next((c for c in list_cards() if getattr(c, attr) == row), None)


def _params(text: str) -> float:
    return float(text.rstrip("B")) * 1e9


# ---- cards ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [r.method for r in PAPER.table1 if r.method not in OURS])
def test_every_table1_baseline_row_has_a_card_naming_its_lmms_eval_model(method):
    card = _card_for(method, "paper_row")
    assert card is not None, f"no model card with paper_row {method!r} in models/"
    assert card.lmms_eval is not None, f"{card.name}: a baseline card says which lmms-eval model evaluates it"
    assert card.lmms_eval.model or card.lmms_eval.note.startswith("no ")


@pytest.mark.parametrize("model", TABLE2_BASELINES)
def test_every_table2_baseline_row_has_a_card_with_its_shapes(model):
    card = _card_for(model, "speed_row")
    assert card is not None and card.architecture, f"no card with the shapes of Table-2 row {model!r}"
    spec = baseline_spec(card.name)
    paper = next(p for p in PAPER.table2 if p.model == model)
    assert spec.visual_tokens == paper.visual_tokens  # from the shapes: spec_from_card checks the card's number
    assert spec.paper_row == model and spec.kind in ("transformer", "linear")


def _installed_lmms_eval_models() -> dict:
    pytest.importorskip("lmms_eval")
    from lmms_eval.models import MODEL_REGISTRY_V2

    return {m: MODEL_REGISTRY_V2.get_manifest(m) for m in MODEL_REGISTRY_V2.list_canonical_model_ids()}


def _init_params(class_path: str) -> tuple[set[str], bool]:
    """The keyword arguments the adapter's __init__ takes (read from its source, not imported; an inherited
    __init__ is followed through the module's imports) and whether it accepts arbitrary ones (lmms-eval's adapters
    take **kwargs only to refuse them: ``assert kwargs == {}``)."""
    module, _, cls = class_path.rpartition(".")
    tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:  # inherited: follow the first base class imported by name
        base = node.bases[0].id
        imported = {a.asname or a.name: f"{n.module}.{a.name}" for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
        return _init_params(imported[base])
    names = {a.arg for a in init.args.args + init.args.kwonlyargs}
    refuses_extra = "assert kwargs == {}" in ast.unparse(init)
    return names, init.args.kwarg is not None and not refuses_extra


def test_the_named_lmms_eval_models_are_in_the_installed_registry_and_take_the_card_arguments():
    installed = _installed_lmms_eval_models()
    named = [c for c in list_cards() if c.lmms_eval is not None and c.lmms_eval.model]
    assert {c.name for c in named} >= {"llava-phi", "qwen-vl-7b", "fuyu-8b"}
    for card in named:
        manifest = installed.get(card.lmms_eval.model)
        assert manifest is not None, f"{card.name}: lmms-eval has no model {card.lmms_eval.model!r}"
        class_path = manifest.chat_class_path or manifest.simple_class_path
        params, open_kwargs = _init_params(class_path)
        wanted = {"pretrained", "device", *card.lmms_eval.model_args}
        assert open_kwargs or wanted <= params, f"{card.name}: {class_path} does not take {sorted(wanted - params)}"


def test_a_card_field_the_code_does_not_know_is_refused(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\ncheckpoint: c\npath: p\nlayout: linear\nlmms_eval: {model: null}\n")
    with pytest.raises(ValueError, match="say why in lmms_eval.note"):
        load_card(bad)
    bad.write_text("name: x\ncheckpoint: c\npath: p\nlayout: linear\narchitecure: {}\n")
    with pytest.raises(ValueError, match="unknown model card field"):
        load_card(bad)


# ---- shapes and builders -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CPU_BASELINES)
def test_full_shapes_match_the_papers_parameter_counts(name):
    """Built on the meta device (no memory): total parameters within 3% of the paper's Table-2 'params'."""
    spec = baseline_spec(name)
    model = build_baseline(spec, torch.device("meta"), torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    paper = next(p for p in PAPER.table2 if p.model == spec.paper_row)
    assert abs(total / _params(paper.params) - 1) < 0.03, (name, total)
    assert model.llm.config.hidden_size == 2560  # every Table-2 baseline LM is a 2.7-2.8B model of width 2560


def test_ldp_downsamples_the_patch_grid_by_two():
    ldp = LDP(32, 48).eval()
    x = torch.randn(2, 24 * 24, 32)
    assert ldp(x).shape == (2, 12 * 12, 48)
    assert ldp(torch.randn(1, 5 * 5, 32)).shape == (1, 9, 48)  # odd grid: ceil(5 / 2) = 3
    with pytest.raises(ValueError, match="square grid"):
        ldp(torch.randn(1, 577, 32))  # the CLS token must be dropped first
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("qformer", 8, 8)


def test_a_tiny_baseline_keeps_the_structure_and_stands_for_no_paper_row():
    full, tiny = baseline_spec("mobilevlm-3b"), baseline_spec(TINY_PREFIX + "mobilevlm-3b")
    assert (tiny.projector, len(tiny.vision), tiny.llm.cls) == (full.projector, len(full.vision), full.llm.cls)
    assert tiny.scale == "tiny" and tiny.paper_row is None and tiny.llm.config["hidden_size"] < 128
    assert baseline_spec("mmmamba-linear") is None and baseline_spec("tiny") is None  # ours are not baselines


# ---- the speed variants on the tiny scale (the GPU path, on CPU in float32) ----------------------------------------

@pytest.fixture(scope="module")
def tiny_models():
    return {n: build_baseline(baseline_spec(TINY_PREFIX + n), torch.device("cpu"), torch.float32)
            for n in CPU_BASELINES}


@pytest.mark.parametrize("name", ["llava-phi", "mobilevlm-3b"])
def test_best_static_cache_step_generates_what_generate_does(tiny_models, name):
    model = tiny_models[name]
    settings = bs.SpeedSettings(output_tokens=8, repeats=1)
    _, _, out = bs._generate(model, bs.table2_inputs(model), 8)
    row = bs.best_run(model, name, settings)
    assert row.extra["tokens_head"] == out.sequences[0].tolist()  # greedy: the same 8 tokens
    assert row.path["cache"] == "StaticCache" and row.path["graph"].startswith("none (not CUDA")


def test_mamba_step_over_its_fixed_cache_matches_a_full_forward(tiny_models):
    """The best variant's cached steps give the logits of re-running the whole sequence (the cache carries the
    conv / SSM state, reset between runs)."""
    model = tiny_models["cobra-3.5b"]
    embeds = model.prompt_embeds(*bs.table2_inputs(model))
    cache, _ = bs._fixed_cache(model, 0)
    step = bs.GreedyStep(model, cache)
    for _ in range(2):  # the second pass runs on the reset cache
        cache.reset()
        seq, logits = embeds, []
        with torch.no_grad():
            step.prefill(embeds)
            for _ in range(4):
                seq = torch.cat([seq, model.llm.get_input_embeddings()(step.tok)], dim=1)
                full = model.llm(inputs_embeds=seq, use_cache=False).logits[:, -1]
                out = model.llm(input_ids=step.tok, use_cache=True, **{step.cache_kw: cache}).logits[:, -1]
                logits.append((full, out))
                step.tok.copy_(out.argmax(-1, keepdim=True))
        for full, out in logits:
            torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-4)


def test_release_rows_record_the_kernels_transformers_took(tiny_models):
    row = bs.release_run(tiny_models["cobra-3.5b"], "tiny-cobra-3.5b", bs.SpeedSettings(output_tokens=4, repeats=1))
    assert row.path["cache"] == "DynamicCache" and row.path["compile"].startswith("none")
    for fn in ("mamba_selective_scan", "mamba_selective_state_update", "causal_conv1d_fn"):
        assert row.path[f"mamba.{fn}"] == "torch (transformers reference)"  # no mamba_ssm / causal_conv1d here
    assert row.path["mamba_ssm"].startswith(("import failed", "ok"))
    assert row.output_tokens == 4 and row.total_s == pytest.approx(row.prefill_s + row.decode_s)
    assert row.extra["variant"] == "release" and row.extra["best_path"] is None


@pytest.mark.skipif(FLA_IMPORTS, reason="flash-linear-attention is importable here: its CPU absence is not testable")
def test_visualrwkv_without_fla_is_recorded_not_dropped():
    with pytest.raises(BaselineUnavailable, match="fla"):
        build_baseline(baseline_spec(TINY_PREFIX + "visualrwkv-3b"), torch.device("cpu"), torch.float32)


def test_visualrwkv_runs_only_where_fla_has_triton():
    pytest.skip("flash-linear-attention's RWKV6 runs only through Triton kernels (no CPU path): VisualRWKV-3B is "
                "measured on the GPU (scripts/device_baselines.sh), where the row records fla's version and kernels")


def test_cli_speed_runs_baselines_and_ours_with_default_variants(tmp_path, capsys):
    from mmmamba_bench.cli import main

    out = tmp_path / "s.json"
    models = ",".join(TINY_PREFIX + n for n in [*CPU_BASELINES, "visualrwkv-3b"]) + ",tiny"
    assert main(["speed", "--models", models, "--output-tokens", "6", "--repeats", "1", "--device", "cpu",
                 "--dtype", "fp32", "--out", str(out)]) == 0
    meta, rows = read_rows(out, SPEED_SCHEMA, SpeedRow)
    got = [(r.model, r.extra["variant"]) for r in rows]
    assert got == [(TINY_PREFIX + n, v) for n in CPU_BASELINES for v in ("release", "best")] + [("tiny", "best")]
    assert all(r.output_tokens == 6 and math.isclose(r.tokens_per_s, 6 / r.total_s) for r in rows)
    assert all(r.path and r.extra["paper_row"] is None for r in rows)  # tiny models stand for no paper row
    gaps = {(g["model"], g["variant"]) for g in meta["not_measured"]}
    if not FLA_IMPORTS:
        assert gaps == {(TINY_PREFIX + "visualrwkv-3b", "release"), (TINY_PREFIX + "visualrwkv-3b", "best")}
        assert "not measured: tiny-visualrwkv-3b (release): fla.models.RWKV6ForCausalLM" in capsys.readouterr().out


def test_cli_speed_refuses_unknown_models_and_variants_before_any_work(tmp_path, capsys):
    from mmmamba_bench.cli import main

    assert main(["speed", "--models", "tiny-llava-phi,llava-phii", "--device", "cpu",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "['llava-phii']" in capsys.readouterr().err
    assert main(["speed", "--models", "tiny", "--variants", "fastest", "--device", "cpu",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "--variants 'fastest'" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_ours_release_variant_is_the_hf_style_decode_on_the_image_prompt(tmp_path):
    from mmmamba_bench.profiler.commands import run_speed

    rows = run_speed(["tiny"], tmp_path / "s.json", torch.device("cpu"), torch.float32, output_tokens=5, repeats=1,
                     variants=("release", "best"), budget_s=None)
    assert [r.extra["variant"] for r in rows] == ["release", "best"]
    assert rows[0].path["decode"].startswith("hf-style-eager") and rows[0].visual_tokens == rows[1].visual_tokens


# ---- eval dispatch -------------------------------------------------------------------------------------------------

def test_eval_of_a_baseline_card_fails_clearly_without_an_adapter_or_weights(tmp_path, monkeypatch, capsys):
    from mmmamba_bench.cli import main

    monkeypatch.setenv("MMMAMBA_BENCH_WEIGHTS", str(tmp_path / "weights"))
    assert main(["eval", "--model", "cobra-3.5b", "--output", str(tmp_path / "o")]) == 2
    assert "no lmms-eval adapter" in capsys.readouterr().err
    assert main(["eval", "--model", "llava-phi", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"weights not found at {tmp_path / 'weights' / 'llava-phi-hf'}" in err and "llava_hf" in err
    assert not (tmp_path / "o").exists()


def test_eval_dispatches_a_baseline_card_to_its_lmms_eval_model(tmp_path, monkeypatch):
    """With weights present the card's lmms-eval model is what simple_evaluate is asked for (stubbed here: the
    real weights are not in the test environment)."""
    pytest.importorskip("lmms_eval")
    from mmmamba_bench.eval import baseline

    (tmp_path / "weights" / "fuyu-8b").mkdir(parents=True)
    monkeypatch.setenv("MMMAMBA_BENCH_WEIGHTS", str(tmp_path / "weights"))
    seen = {}

    def fake_simple_evaluate(**kwargs):
        seen.update(kwargs)
        return {"results": {"mini_pope": {"f1,none": 0.5}}, "config": {"model": kwargs["model"]}}

    monkeypatch.setattr("lmms_eval.evaluator.simple_evaluate", fake_simple_evaluate)
    monkeypatch.setattr("mmmamba_bench.eval.common.prepare_tasks",
                        lambda tasks, limit, d, m: (["mini_pope"], limit, tmp_path))
    monkeypatch.setattr("mmmamba_bench.eval.tasks.include_paths", lambda *a: [])
    monkeypatch.setattr("mmmamba_bench.eval.tasks.data_identity", lambda *a, **k: {})
    out = baseline.run_baseline_eval(find_card("fuyu-8b"), "mini_pope", tmp_path / "o", device="cpu")
    assert seen["model"] == "fuyu" and seen["model_args"] == f"pretrained={tmp_path / 'weights' / 'fuyu-8b'},device=cpu"
    record = json.loads(out.read_text())["mmmamba_bench"]["model"]
    assert (record["label"], record["card"], record["paper_row"]) == ("fuyu-8b", "fuyu-8b", "Fuyu-8B(HD)")
    assert out.parent.name == "fuyu-8b"
    from mmmamba_bench.report.scores import load_results_file

    assert load_results_file(out).label == "fuyu-8b"  # the Table-1 report reads the card name, not the weights dir


# ---- report: placement and the paper's ordering --------------------------------------------------------------------

def _row(model, tps, variant, paper_row, device="NVIDIA H200"):
    return SpeedRow(model=model, kind="x", device=device, dtype="bfloat16", path={"graph": "none"}, visual_tokens=1,
                    prompt_tokens=1, output_tokens=256, prefill_s=0.1, decode_s=256 / tps - 0.1,
                    total_s=256 / tps, tokens_per_s=tps, extra={"variant": variant, "paper_row": paper_row})


def test_the_papers_ordering_holds_on_its_numbers_and_is_judged_per_device():
    from mmmamba_bench.report.ordering import comparisons, judge

    assert [v.status for v in judge(comparisons([], PAPER.table2)["paper's numbers (RTX 4090)"])] == ["holds"] * 3
    rows = [_row("cobra-3.5b", 40.0, "release", "Cobra-3.5B"), _row("llava-phi", 25.0, "release", "LLaVA-Phi"),
            _row("hovle-2.6b", 500.0, "best", "HoVLE"), _row("cobra-3.5b", 90.0, "best", "Cobra-3.5B"),
            _row("llava-phi", 999.0, "release", "LLaVA-Phi", device="other GPU")]
    comp = comparisons(rows, PAPER.table2)
    release = {v.claim.text: v for v in judge(comp["NVIDIA H200: release-style rows"])}
    assert release["Cobra comes next"].status == "incomplete"  # VisualRWKV, MobileVLM, HoVLE not measured
    assert not release["Cobra comes next"].violations  # 40 > 25; the other GPU's 999 is not compared
    best = {v.claim.text: v for v in judge(comp["NVIDIA H200: best row of each model"])}
    assert ("Cobra-3.5B", "HoVLE") in best["Cobra comes next"].violations
    assert comp["NVIDIA H200: best row of each model"]["Cobra-3.5B"].tokens_per_s == 90.0  # the faster variant


def test_speed_report_places_baseline_rows_and_states_the_ordering(tmp_path):
    from mmmamba_bench.report import build_report
    from mmmamba_bench.results import write_rows

    rows = [_row("llava-phi", 30.0, "release", "LLaVA-Phi"), _row("llava-phi", 200.0, "best", "LLaVA-Phi"),
            _row("hovle-2.6b", 500.0, "best", "HoVLE"), _row("cobra-3.5b", 90.0, "best", "Cobra-3.5B")]
    rows[0].extra["best_path"] = None
    meta = {"not_measured": [{"model": "visualrwkv-3b", "variant": "release", "reason": "cannot import fla"}]}
    speed = write_rows(tmp_path / "s.json", SPEED_SCHEMA, rows, meta)
    text = build_report([], [], [speed], tmp_path / "r").read_text()
    table = [line for line in text.splitlines() if line.startswith("| LLaVA-Phi") or line.startswith("| llava-phi")]
    assert [line.split("|")[2].strip() for line in table] == ["paper", "measured: release", "measured: best"]
    assert "- visualrwkv-3b (release): cannot import fla" in text
    assert "Our optimised HoVLE (hovle-2.6b (best), 500.0 tokens/s) is at least as fast as Cobra-3.5B" in text
    assert "NVIDIA H200" in text


def test_table1_places_a_baseline_run_by_its_card():
    from mmmamba_bench.report.scores import table1_row_of

    assert table1_row_of("cobra-3.5b", PAPER.table1) == "Cobra"
    assert table1_row_of("visualrwkv-3b", PAPER.table1) == "VisualRWKV"
    assert table1_row_of("LLaVA-Phi", PAPER.table1) == "LLaVA-Phi"  # no card of that name: the paper's own name
    assert table1_row_of("my-run", PAPER.table1) is None


def test_speed_settings_signature_is_what_run_speed_passes():
    assert set(inspect.signature(bs.SpeedSettings).parameters) == {"output_tokens", "repeats", "seed"}
