"""Data-parallel evaluation the ecosystem's way: processes started by ``accelerate launch``, requests sharded by
lmms-eval, results gathered on rank 0 and written once. On CPU the processes form a gloo group.

Both tests start real processes (2 cores: each process imports torch and lmms-eval, ~10-20 s).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from mmmamba_bench.eval.runner import RESULTS_KEY  # noqa: E402

LAUNCH_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
# `accelerate launch`, the console script a user types (its CLI imports every subcommand: it once failed to start in
# the CPU lock through timm -> torchvision)
ACCELERATE_SCRIPT = [str(Path(sys.executable).parent / "accelerate"), "launch"]

PROBE = '''
import json, sys
from mmmamba_bench.eval.adapter import MMMambaLMM
lmm = MMMambaLMM(pretrained="demo-teacher", device="cpu")
acc = lmm.accelerator
with open(f"{sys.argv[1]}/rank{lmm.rank}.json", "w") as f:
    json.dump({"rank": lmm.rank, "world_size": lmm.world_size, "device": str(lmm.device),
               "distributed_type": str(acc.distributed_type), "backend": acc.state.backend}, f)
'''


@pytest.mark.slow
def test_the_adapter_reports_its_rank_and_world_size_under_accelerate_launch(tmp_path):
    """`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2` (what lmms-eval's command line needs
    on CPU): rank 0 and 1 of 2, joined through gloo. (mmmamba-bench's own launch, where the adapter asks for CPU
    itself, is test_two_cpu_processes_give_exactly_the_results_of_one.) Also: `accelerate launch` starts in the
    locked CPU environment."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    subprocess.run([*ACCELERATE_SCRIPT, *LAUNCH_FLAGS, str(script), str(tmp_path)], env=env, check=True, timeout=300)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(s["rank"], s["world_size"]) for s in seen] == [(0, 2), (1, 2)]
    assert all(s["device"] == "cpu" and s["distributed_type"] == "DistributedType.MULTI_CPU"
               and s["backend"] == "gloo" for s in seen)


def test_a_lone_process_is_rank_0_of_1_and_touches_no_accelerate_state(monkeypatch):
    from mmmamba_bench.eval.adapter import MMMambaLMM

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    lmm = MMMambaLMM(pretrained="demo-teacher", device="cpu")
    assert (lmm.rank, lmm.world_size) == (0, 1) and not hasattr(lmm, "accelerator")


def test_a_malformed_world_size_is_an_error(monkeypatch):
    from mmmamba_bench.eval.adapter import launched_world_size

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        launched_world_size()


def _without_progress_bars(text: str) -> str:
    """What the processes said, less tqdm's and datasets' progress lines (they filled a failure's last 3,000
    characters once, hiding the error)."""
    lines = text.replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines if line.strip() and not ("%|" in line or line.endswith("/s]")))


def _results(run: Path) -> dict:
    (results_file,) = run.glob("*_results.json")
    return json.loads(results_file.read_text())


def _samples(run: Path) -> dict[str, list[dict]]:
    return {f.name.split("_samples_")[1]: [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(run.glob("*_samples_*.jsonl"))}


def _scores_and_stderrs(results: dict) -> tuple[dict, dict]:
    scores, stderrs = {}, {}
    for task, values in results["results"].items():
        for key, value in values.items():
            (stderrs if "_stderr" in key else scores)[(task, key)] = value
    return scores, stderrs


@pytest.mark.slow
def test_two_cpu_processes_give_exactly_the_results_of_one(tmp_path, mini_suite, monkeypatch, capfd):
    """The mini-suite with the embedded teacher, --limit 5 (rounded to whole clusters: 12 documents per task, 6 per
    process), one process, then `mmmamba-bench eval --num-processes 2` (the adapter forms the gloo group): the same
    scores bit for bit and the same per-sample records (document, target, prediction, per-sample metrics) in the same
    order.

    lmms-eval's standard errors sum over the per-sample values in the order it gathered them (rank 0's shard, then
    rank 1's), so they may differ from one process's in the last bit: compared to rounding."""
    from mmmamba_bench import cli

    data_dir = mini_suite[0]
    monkeypatch.setenv("MMMAMBA_BENCH_MINI_DATA", str(data_dir))  # for the launched processes too
    flags = ["--model", "demo-teacher", "--tasks", "mini", "--label", "teacher", "--device", "cpu",
             "--batch-size", "4", "--limit", "5"]
    assert cli.main(["eval", *flags, "--output", str(tmp_path / "one")]) == 0
    assert cli.main(["eval", *flags, "--output", str(tmp_path / "two"), "--num-processes", "2"]) == 0, \
        _without_progress_bars(capfd.readouterr().err)[-6000:]  # the launched processes' own errors (fd 2)
    one, two = _results(tmp_path / "one" / "teacher"), _results(tmp_path / "two" / "teacher")  # one file each
    assert one[RESULTS_KEY]["world_size"] == 1 and two[RESULTS_KEY]["world_size"] == 2
    assert two["n-samples"] == one["n-samples"] and one["n-samples"]["mini_mme"]["effective"] == 12
    (scores_one, stderrs_one), (scores_two, stderrs_two) = _scores_and_stderrs(one), _scores_and_stderrs(two)
    assert scores_two == scores_one
    assert stderrs_two.keys() == stderrs_one.keys()
    assert all(b == a if isinstance(a, str) else math.isclose(b, a, rel_tol=1e-12)
               for a, b in ((stderrs_one[k], stderrs_two[k]) for k in stderrs_one))
    samples_one, samples_two = _samples(tmp_path / "one" / "teacher"), _samples(tmp_path / "two" / "teacher")
    assert len(samples_one) == 7 and samples_two == samples_one
    assert all([row["doc_id"] for row in rows] == list(range(12)) for rows in samples_two.values())


def test_samples_are_put_in_one_processs_order():
    """Two processes, two filters: rank 0 logs documents 0 and 2 for filter a, then for b; rank 1 documents 1, 3."""
    from mmmamba_bench.eval.runner import in_document_order

    gathered = [{"doc_id": d, "filter": f} for d, f in
                [(0, "a"), (2, "a"), (0, "b"), (2, "b"), (1, "a"), (3, "a"), (1, "b"), (3, "b")]]
    assert [(r["filter"], r["doc_id"]) for r in in_document_order(gathered)] == [
        ("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1), ("b", 2), ("b", 3)]
    one_process = in_document_order(gathered)
    assert in_document_order(one_process) == one_process
