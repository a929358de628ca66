"""``run_eval`` through lmms-eval's own evaluator: a constructed model handed to ``simple_evaluate``, lmms-eval's
results JSON with what produced it added, the mini-suite generated on a fresh install (and a broken one refused)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from mmmamba_bench import provenance  # noqa: E402
from mmmamba_bench.eval.runner import RESULTS_KEY, run_eval  # noqa: E402
from mmmamba_bench.eval.tasks import TaskSetupError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL_KEYS = {"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "date"}


@pytest.mark.slow
def test_eval_generates_a_missing_suite_and_records_what_produced_the_scores(tmp_path, mini_suite, caplog):
    import torch

    import mmmamba_bench

    data_dir = tmp_path / "fresh-install" / "mini-suite"  # holds no suite at all
    with caplog.at_level(logging.INFO, logger="mmmamba_bench.data.minisuite"):
        out = run_eval("demo-teacher", "mini_mme,mini_gqa", tmp_path / "results", label="teacher", device="cpu",
                       dtype="float32", batch_size=4, limit=1, mini_data_dir=data_dir)
    assert any("no mini-suite in" in r.getMessage() and "generating it" in r.getMessage() for r in caplog.records)
    generated, shipped = data_dir / "manifest.json", mini_suite[0] / "manifest.json"
    assert generated.read_bytes() == shipped.read_bytes()  # the deterministic suite, whole

    results = json.loads(out.read_text())
    assert LMMS_EVAL_KEYS <= set(results)  # lmms-eval's own layout, kept
    assert set(results["results"]) == {"mini_mme", "mini_gqa"}
    assert results["n-samples"]["mini_mme"]["effective"] == 2  # --limit 1 took a whole MME image pair
    assert results["config"]["model"] == "MMMambaLMM"  # an adapter instance was handed over (a name gives "mmmamba")
    assert "label=teacher" in results["config"]["model_args"]

    made = results[RESULTS_KEY]
    assert {"ssd_scan", "ssd_step", "attention", "decode", "cuda_graph", "device_name"} <= set(made["code_path"])
    assert (made["code_path"]["dtype"], made["code_path"]["device"], made["code_path"]["cuda_graph"]) == (
        "float32", "cpu", "no")
    assert made["model"]["kind"] == "transformer" and made["limit"] == 2
    assert made["packages"]["torch"] == torch.__version__ and made["packages"]["lmms-eval"] == "0.7.3"
    assert {"python", "transformers", "datasets", "numpy"} <= set(made["packages"])
    assert made["project"]["version"] == mmmamba_bench.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if head:  # run from a git checkout
        assert made["project"]["git"]["commit"] == head and isinstance(made["project"]["git"]["dirty"], bool)
    assert made["data"] == {"mini_suite": {"dir": str(data_dir.resolve()),
                                           "manifest_sha256": hashlib.sha256(generated.read_bytes()).hexdigest()}}
    samples = sorted(out.parent.glob("*_samples_*.jsonl"))
    assert len(samples) == 2 and all(s.stat().st_mtime <= out.stat().st_mtime for s in samples)  # results last


def test_a_present_but_broken_suite_is_an_error_not_regenerated(tmp_path):
    data_dir = tmp_path / "mini"
    data_dir.mkdir()
    (data_dir / "manifest.json").write_text("{}")
    with pytest.raises(TaskSetupError, match="mini_mme"):
        run_eval("demo-teacher", "mini_mme", tmp_path / "results", device="cpu", mini_data_dir=data_dir)
    assert [p.name for p in data_dir.iterdir()] == ["manifest.json"]  # nothing generated over it
    assert not (tmp_path / "results").exists()


# ---- provenance ----------------------------------------------------------------------------------------------------

def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_git_state_commit_and_dirty(tmp_path):
    assert provenance.git_state(None) is None
    assert provenance.git_state(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "out.json").write_text("{}")  # outputs git ignores do not make the tree dirty
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True}


def test_no_git_installed_is_no_error(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # git cannot be found
    assert provenance.git_state(tmp_path) is None
    monkeypatch.setattr("mmmamba_bench.assets.checkout_root", lambda: None)  # an installed wheel: no checkout
    assert "git" not in provenance.project() and provenance.project()["name"] == "mmmamba-bench"


def test_package_versions_say_none_for_what_is_missing():
    versions = provenance.package_versions(("numpy", "mmb-surely-not-installed"))
    assert versions["numpy"] and versions["mmb-surely-not-installed"] is None and versions["python"]


def test_submission_files_go_under_the_runs_folder_not_the_current_directory(tmp_path, mini_suite, monkeypatch):
    """lmms-eval's aggregations (MMBench sheets, TextVQA JSON) write through generate_submission_file(name, args):
    the runner's cli_args put them in <output>/<label>/submissions/, never in the current directory."""
    import lmms_eval.evaluator
    from lmms_eval.tasks._task_utils.file_utils import generate_submission_file

    written = []

    def fake_simple_evaluate(*, cli_args, **kwargs):  # what an aggregation does with the args it is handed
        path = Path(generate_submission_file("mmbench_en_dev_results.xlsx", cli_args))
        path.write_text("sheet")
        written.append(path)
        return {"results": {}, "samples": {}}

    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", fake_simple_evaluate)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_eval("demo-teacher", "mini_sqa", tmp_path / "out", label="m", device="cpu", mini_data_dir=mini_suite[0])
    assert written == [tmp_path / "out" / "m" / "submissions" / "mmbench_en_dev_results.xlsx"]
    assert not any(cwd.iterdir())
