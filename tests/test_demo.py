"""The demo: one chain of library calls, the smoke chain the same steps on a smaller budget, errors let through, and
a broken environment stopped before any work (the test of the smoke test)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from mmmamba_bench import demo
from mmmamba_bench.demo import FULL, SMOKE, plan

REPO = Path(__file__).resolve().parents[1]


def _names(steps) -> list[str]:
    return [s.name for s in steps]


@pytest.mark.parametrize("teacher", ["embedded", "train"])
def test_smoke_chain_has_exactly_the_full_chains_steps(tmp_path, teacher):
    full = plan(tmp_path / "full", tmp_path / "data", teacher, FULL)
    smoke = plan(tmp_path / "smoke", tmp_path / "data", teacher, SMOKE)
    assert _names(smoke) == _names(full)
    assert _names(full)[:1] == ["data"] and _names(full)[-2:] == ["profile", "report"]
    # every output of a chain lies in its own folder (or is the shared data / the shipped teacher)
    for steps, out in ((full, tmp_path / "full"), (smoke, tmp_path / "smoke")):
        assert all(s.output.is_relative_to(out) or s.name == "data" for s in steps)


def test_smoke_budget_is_smaller_in_every_field_and_full_uses_the_recipes():
    assert FULL.distill_max_steps is None and FULL.teacher_max_steps is None and FULL.eval_limit is None
    for f in dataclasses.fields(demo.Budget):
        if f.name == "name":
            continue
        small, big = getattr(SMOKE, f.name), getattr(FULL, f.name)
        if f.name == "profile_contexts":
            assert max(small) < min(big)
        else:
            assert small is not None and (big is None or small < big), f.name


def test_smoke_writes_only_into_its_own_folder_by_default(tmp_path):
    assert demo.default_out(SMOKE) != demo.default_out(FULL)
    assert demo.default_data_dir(tmp_path / "s", SMOKE) == tmp_path / "s" / "data"
    from mmmamba_bench.assets import default_mini_data_dir

    assert demo.default_data_dir(tmp_path / "f", FULL) == default_mini_data_dir()


def test_demo_uses_the_embedded_teacher_unless_asked_to_train_one(tmp_path):
    embedded = _names(plan(tmp_path, tmp_path / "d"))
    assert "train-teacher" not in embedded
    trained = plan(tmp_path, tmp_path / "d", teacher="train")
    assert _names(trained) == embedded[:1] + ["train-teacher"] + embedded[1:]
    assert next(s for s in trained if s.name == "train-teacher").output == tmp_path / "models" / "teacher"
    with pytest.raises(ValueError, match="teacher must be one of"):
        plan(tmp_path, tmp_path / "d", teacher="nope")


def test_demo_evaluates_all_four_models(tmp_path):
    evals = [s for s in plan(tmp_path, tmp_path / "d") if s.name.startswith("eval-")]
    assert _names(evals) == [f"eval-{m}" for m in ("teacher", "seeded-linear", "linear", "hybrid")]
    assert all(s.output.parent == tmp_path / "results" / s.name[len("eval-"):] for s in evals)


@pytest.mark.parametrize("settings", [{"teacher": "train", "budget": "full"}, {"teacher": "embedded",
                                                                              "budget": "smoke"}])
def test_demo_refuses_to_resume_with_other_settings(tmp_path, settings):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo_settings.json").write_text(json.dumps(settings))
    with pytest.raises(RuntimeError, match="other settings"):
        demo.run_demo(tmp_path / "out", data_dir=tmp_path / "d", teacher="embedded", budget=FULL)


def test_a_failing_step_raises_its_own_error_and_later_steps_do_not_run(tmp_path, monkeypatch, capsys):
    class StepBroke(Exception):
        pass

    ran = []

    def fail():
        raise StepBroke("the step's own message")

    steps = [demo.Step("first", lambda: ran.append("first") or (tmp_path / "out" / "first").mkdir(),
                       tmp_path / "out" / "first"),
             demo.Step("second", fail, tmp_path / "out" / "second"),
             demo.Step("third", lambda: ran.append("third"), tmp_path / "out" / "third")]
    monkeypatch.setattr(demo, "preflight", lambda *a: None)
    monkeypatch.setattr(demo, "plan", lambda *a: steps)
    with pytest.raises(StepBroke, match="the step's own message"):
        demo.run_demo(tmp_path / "out", data_dir=tmp_path / "d")
    assert ran == ["first"]
    assert "step 'second' failed" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "out" / "timings.json").read_text())) == {"preflight", "first"}
    # a rerun resumes: the finished step is skipped
    steps[1] = demo.Step("second", lambda: ran.append("second"), tmp_path / "out" / "second")
    demo.run_demo(tmp_path / "out", data_dir=tmp_path / "d")
    assert ran == ["first", "second", "third"]


def _write_threads(path: Path, *, max_threads: int, progress: bool) -> None:  # a group step (runs in a worker)
    path.write_text(f"{max_threads} {progress}")


def _fail(path: Path, *, max_threads: int, progress: bool) -> None:
    raise FileExistsError(f"{path}: the step's own error")


def test_batches_keep_order_and_put_a_groups_consecutive_steps_together(tmp_path):
    names = [[s.name for s in b] for b in demo.batches(plan(tmp_path, tmp_path / "d"))]
    group = ["distill-linear", "distill-hybrid", "eval-teacher", "eval-seeded-linear"]
    assert group in names  # the longest first: a worker freed by the shorter distillation takes the evaluations
    assert names.index(group) < names.index(["eval-linear"]) < names.index(["eval-hybrid"])
    assert [n for b in names for n in b] == _names(plan(tmp_path, tmp_path / "d"))
    assert all(len(b) == 1 for b in names if b != group)


def test_side_by_side_steps_run_to_their_end_and_the_failure_is_raised_as_is(tmp_path):
    ok = demo.Step("ok", partial(_write_threads, tmp_path / "ok"), tmp_path / "ok", group="g")
    bad = demo.Step("bad", partial(_fail, tmp_path / "bad"), tmp_path / "bad", group="g")
    seconds = demo.run_side_by_side([ok], cores=2)
    assert (tmp_path / "ok").read_text() == "2 False" and set(seconds) == {"ok"}  # the cores go to the one step
    with pytest.raises(FileExistsError, match="the step's own error"):
        demo.run_side_by_side([bad, ok], cores=2)
    assert (tmp_path / "ok").read_text() == "1 False"  # ran beside the failing one, to its end, on 1 of 2 cores
    # more steps than cores: 2 workers of 1 thread, the third step waits for a free one; all run
    three = [demo.Step(n, partial(_write_threads, tmp_path / n), tmp_path / n, group="g") for n in ("a", "b", "c")]
    assert set(demo.run_side_by_side(three, cores=2)) == {"a", "b", "c"}
    assert [(tmp_path / n).read_text() for n in ("a", "b", "c")] == ["1 False"] * 3


# ---- the test of the smoke test: a broken lmms-eval import stops the smoke chain before any work -------------------

def fake_filelock_4(root: Path) -> Path:
    """A ``filelock`` package like filelock 4.x: the whole public API, but no ``filelock._api`` module (the real
    break of 2026-12-01: lmms-eval 0.7.3's simple_evaluate imports ``filelock._api``). Built from the installed
    filelock, its ``_api`` module renamed; a ``filelock-4.3.1.dist-info`` gives its version."""
    import filelock

    src = Path(filelock.__file__).parent
    pkg = root / "filelock"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_api.py").rename(pkg / "_base.py")
    for py in pkg.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        py.write_text(text.replace("._api import", "._base import").replace("._api ", "._base "),
                      encoding="utf-8")
    info = root / "filelock-4.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: filelock\nVersion: 4.3.1\n")
    (info / "RECORD").write_text("filelock/__init__.py,,\n")
    return root


def test_fake_filelock_reproduces_the_break(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_filelock_4(tmp_path / "site")), str(REPO)])}
    probe = ("import importlib.metadata as m, filelock; print(m.version('filelock'), hasattr(filelock, 'FileLock'));"
             "import filelock._api")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["4.3.1", "True"]  # the fake is what gets imported, with its public API
    assert "No module named 'filelock._api'" in run.stderr


@pytest.mark.slow
def test_smoke_chain_stops_before_any_work_when_lmms_eval_cannot_run(tmp_path):
    site = fake_filelock_4(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "smoke"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mmmamba_bench.cli", "demo", "--smoke", "--fresh", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert run.returncode == 2, run.stdout + run.stderr
    err = run.stderr
    assert "lmms-eval 0.7.3 cannot run: `import filelock._api` failed" in err, err
    assert "filelock 4.3.1 installed" in err and "requirements/cpu.txt pins 3." in err, err
    assert "[demo] data" not in run.stdout  # no step started
    assert not (out / "data").exists() and not (out / "models").exists()
    assert seconds < 120, f"took {seconds:.0f} s to fail"  # Python + imports; no training, no data generation
