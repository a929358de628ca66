"""`mmmamba-bench regress` on hand-built runs: headlines recomputed from samples, verdicts, refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mmmamba_bench.regress.compare import NO_CHANGE, REGRESSED, compare_runs
from mmmamba_bench.regress.runs import NotComparable

STAMP = "20260101T000000"


def write_run(folder: Path, samples: dict[str, list[dict]], versions: dict[str, float] | None = None,
              headline: dict[str, dict] | None = None) -> Path:
    """A run folder as `mmmamba-bench eval --log-samples` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {"results": headline or {t: {"alias": t} for t in samples},
               "versions": versions or {t: 1.0 for t in samples}}
    (folder / f"{STAMP}_results.json").write_text(json.dumps(results))
    for task, rows in samples.items():
        with (folder / f"{STAMP}_samples_{task}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return folder


def sqa_samples(correct: list[bool]) -> list[dict]:
    return [{"doc_id": i, "doc": {"id": f"sqa-{i}"}, "target": "A", "accuracy": float(ok)}
            for i, ok in enumerate(correct)]


def mme_samples(pairs: list[tuple[bool, bool]]) -> list[dict]:
    rows = []
    for g, pair in enumerate(pairs):
        for ok in pair:
            rows.append({"doc_id": len(rows), "doc": {"id": f"mme-{len(rows)}", "group": f"g{g}"}, "target": "Yes",
                         "mme_score": {"category": "color" if g % 2 else "count", "image_id": f"g{g}",
                                       "correct": ok}, "accuracy": float(ok)})
    return rows


def pope_samples(truth_pred: list[tuple[str, str, str]]) -> list[dict]:
    rows = []
    for i, (split, truth, pred) in enumerate(truth_pred):
        record = {"split": split, "truth": truth, "prediction": pred}
        rows.append({"doc_id": i, "doc": {"id": f"pope-{i}", "group": f"img{i // 6}"}, "target": truth,
                     "f1_mean": record, "accuracy": record})
    return rows


def test_headlines_recomputed_from_samples_by_hand(tmp_path):
    # MME (acc + acc+ per category, summed): count: pairs (T,T) (T,F) -> acc 75, acc+ 50 -> 125;
    # color: pairs (F,F) (T,T) -> acc 50, acc+ 50 -> 100; total 225
    mme = mme_samples([(True, True), (False, False), (True, False), (True, True)])
    # POPE: mean over the three splits of yes-positive F1
    pope = pope_samples([("random", "yes", "yes"), ("random", "no", "no"), ("random", "yes", "no"),
                         ("popular", "yes", "yes"), ("popular", "no", "yes"), ("popular", "yes", "yes"),
                         ("adversarial", "yes", "yes"), ("adversarial", "no", "no"),
                         ("adversarial", "no", "no"), ("adversarial", "yes", "yes")])
    run = write_run(tmp_path / "a", {"mini_mme": mme, "mini_pope": pope})
    rows = {r.task: r for r in compare_runs(run, run, resamples=1000).rows}
    assert rows["mini_mme"].baseline == pytest.approx(225.0)
    f1_random = 2 * 1 / (2 * 1 + 0 + 1)  # tp 1, fp 0, fn 1
    f1_popular = 2 * 2 / (2 * 2 + 1 + 0)  # tp 2, fp 1, fn 0
    assert rows["mini_pope"].baseline == pytest.approx((f1_random + f1_popular + 1.0) / 3)
    assert rows["mini_mme"].clusters == 4 and rows["mini_pope"].clusters == 2  # image pairs / POPE images
    assert all(r.verdict == NO_CHANGE and r.difference == 0 for r in rows.values())


def test_degraded_run_is_flagged_and_identical_is_not(tmp_path):
    rng = random.Random(0)
    good = [rng.random() < 0.8 for _ in range(300)]
    bad = [ok and rng.random() < 0.7 for ok in good]  # loses ~24% of the right answers
    base = write_run(tmp_path / "base", {"mini_sqa": sqa_samples(good), "mini_seed": sqa_samples(good)})
    cand = write_run(tmp_path / "cand", {"mini_sqa": sqa_samples(bad), "mini_seed": sqa_samples(good)})
    c = compare_runs(base, cand, resamples=2000)
    rows = {r.task: r for r in c.rows}
    assert rows["mini_sqa"].verdict == REGRESSED and c.regressed == ["mini_sqa"]
    assert rows["mini_sqa"].test.startswith("McNemar") and rows["mini_sqa"].p_holm < 0.05
    assert rows["mini_sqa"].ci_high < 0 and rows["mini_sqa"].mde > 0
    assert rows["mini_seed"].verdict == NO_CHANGE
    # a tolerance larger than the drop (in the table's units: accuracy x100) keeps it from failing
    drop = -rows["mini_sqa"].difference * 100
    assert not compare_runs(base, cand, resamples=2000, tolerance=drop + 1).regressed


def test_runs_that_cannot_be_compared_are_refused_naming_what_differs(tmp_path):
    base = write_run(tmp_path / "base", {"mini_sqa": sqa_samples([True, False, True])})
    other_task = write_run(tmp_path / "t", {"mini_seed": sqa_samples([True, False, True])})
    with pytest.raises(NotComparable, match=r"different tasks: only in the baseline \['mini_sqa'\]"):
        compare_runs(base, other_task)
    other_docs = write_run(tmp_path / "d", {"mini_sqa": sqa_samples([True, False])})
    with pytest.raises(NotComparable, match="task 'mini_sqa': different documents"):
        compare_runs(base, other_docs)
    changed = sqa_samples([True, False, True])
    changed[1]["target"] = "B"
    with pytest.raises(NotComparable, match="document 1 differs"):
        compare_runs(base, write_run(tmp_path / "c", {"mini_sqa": changed}))
    with pytest.raises(NotComparable, match="version 1.0 in the baseline and 2.0"):
        compare_runs(base, write_run(tmp_path / "v", {"mini_sqa": sqa_samples([True, False, True])},
                                     versions={"mini_sqa": 2.0}))
    no_logs = write_run(tmp_path / "n", {"mini_sqa": sqa_samples([True, False, True])})
    (no_logs / f"{STAMP}_samples_mini_sqa.jsonl").unlink()
    with pytest.raises(NotComparable, match="no per-sample log for task 'mini_sqa'"):
        compare_runs(base, no_logs)


@pytest.mark.slow
def test_gate_flags_a_deliberately_degraded_checkpoint(tmp_path, mini_suite, capsys):
    """The CI gate end to end: the embedded teacher with noise on its MLP and attention output projections, evaluated by lmms-eval on the
    mini-suite, against the baseline kept in the repository -> `regress` exits 1 naming a regressed task."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mmmamba_bench.assets import models_dir
    from mmmamba_bench.cli import main
    from mmmamba_bench.eval.runner import run_eval

    teacher = models_dir() / "demo-teacher"
    degraded = tmp_path / "degraded"
    shutil.copytree(teacher, degraded)
    weights = load_file(degraded / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name in [k for k in weights if "feed_forward.w2" in k or "attention.wo" in k]:
        w = weights[name]
        weights[name] = w + 2.0 * w.std() * torch.randn(w.shape, generator=gen, dtype=w.dtype)
    save_file(weights, degraded / "model.safetensors", metadata={"format": "pt"})
    run_eval(degraded, "mini", tmp_path / "cand", label="degraded", mini_data_dir=mini_suite[0])
    baseline = Path(__file__).resolve().parents[1] / "reports" / "baselines" / "demo-teacher-mini"
    code = main(["regress", "--baseline", str(baseline), "--candidate", str(tmp_path / "cand" / "degraded"),
                 "--out", str(tmp_path / "report"), "--resamples", "2000"])
    report = json.loads((tmp_path / "report" / "regress.json").read_text())
    assert code == 1 and report["regressed"], report["rows"]
    assert "mmmamba-bench regress: regressed:" in capsys.readouterr().err
