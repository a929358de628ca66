"""Preflight: the imports lmms-eval makes when called are found in its source, failures name the package, its version
and the lock's pin, and broken checkpoints are found from their headers before any model loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmmamba_bench import preflight
from mmmamba_bench.preflight import Need, PreflightError


def test_call_time_imports_are_read_from_function_bodies_only():
    source = '''
import os                                   # module level: covered by importing the module itself
from a import b

def f():
    import x.y
    from p.q import r, s
    def inner():
        import nested
    try:
        import optional_extra
    except ImportError:
        pass
    try:
        import required_inside_try
    finally:
        pass

class C:
    def m(self):
        from .relative import z             # relative: part of the package itself
        import x.y                          # a repeat
'''
    got = preflight.call_time_imports(source, "owner")
    assert got == [Need("x.y", "owner"), Need("p.q", "owner", ("r", "s")), Need("nested", "owner"),
                   Need("required_inside_try", "owner")]


def test_lmms_eval_call_time_imports_include_the_one_that_broke():
    pytest.importorskip("lmms_eval")
    needs = preflight.lmms_eval_call_time_imports()
    assert Need("filelock._api", "lmms-eval") in needs  # _enable_reentrant_filelocks, run by simple_evaluate
    assert all(n.owner == "lmms-eval" for n in needs)
    ordered = preflight.evaluation_needs()  # the cheap call-time imports come before the evaluator's own import
    assert ordered.index(Need("filelock._api", "lmms-eval")) < ordered.index(Need("lmms_eval.evaluator", "lmms-eval"))
    preflight.check(preflight.evaluation_needs())  # this environment (the lock) passes


def _fake_distribution(site: Path, name: str, version: str, init: str) -> None:
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(init)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n")


def test_failure_names_owner_culprit_versions_and_the_pin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_distribution(site, "mmb_needer", "1.2.3", "from mmb_lib import _gone\n")
    _fake_distribution(site, "mmb_lib", "4.3.1", "")
    monkeypatch.syspath_prepend(str(site))
    preflight._module_owners.cache_clear()
    lock = tmp_path / "requirements" / "cpu.txt"
    lock.parent.mkdir()
    lock.write_text("mmb-lib==3.2.1\n    # via mmb-needer\nother==1\n")
    with pytest.raises(ImportError) as err:
        preflight._try_import(Need("mmb_needer", "mmb-needer"))
    line = preflight.explain_import_failure(Need("mmb_needer", "mmb-needer"), err.value, lock)
    assert line.startswith("mmb-needer 1.2.3 cannot run: `import mmb_needer` failed (")
    assert "mmb_lib 4.3.1 installed" in line and "requirements/cpu.txt pins 3.2.1" in line


def test_a_missing_distribution_and_an_unpinned_one(tmp_path):
    missing = preflight.import_problems([Need("mmb_not_installed_anywhere", "mmb-not-installed")])
    assert missing == ["mmb-not-installed (not installed) cannot run: `import mmb_not_installed_anywhere` failed "
                       "(ModuleNotFoundError: No module named 'mmb_not_installed_anywhere'; mmb_not_installed_anywhere "
                       "is not installed)"]
    assert preflight.locked_version("numpy", None) is None
    lock = tmp_path / "cpu.txt"
    lock.write_text("torch==2.13.0+cpu \\\n    --hash=sha256:x\nscikit_learn==1.9.1 ; python_version >= '3.10'\n")
    assert preflight.locked_version("torch", lock) == "2.13.0+cpu"
    assert preflight.locked_version("scikit-learn", lock) == "1.9.1"  # names compare normalised


def test_one_problem_per_package_then_its_other_needs_are_skipped(monkeypatch):
    tried = []
    real = preflight._try_import

    def spy(need):
        tried.append(need.module)
        return real(need)

    monkeypatch.setattr(preflight, "_try_import", spy)
    with pytest.raises(PreflightError) as err:
        preflight.check([Need("mmb_missing_a", "pkg"), Need("json", "pkg"), Need("json", "other")])
    assert tried == ["mmb_missing_a", "json"]  # pkg's second need skipped, other's checked
    assert len(err.value.problems) == 1 and "cannot start: 1 problem(s)" in str(err.value)


# ---- checkpoints ---------------------------------------------------------------------------------------------------

@pytest.fixture()
def teacher_copy(tmp_path) -> Path:
    from mmmamba_bench.cards import resolve_model

    dst = tmp_path / "teacher"
    shutil.copytree(resolve_model("demo-teacher"), dst)
    return dst


def test_a_good_checkpoint_passes(teacher_copy):
    assert preflight.checkpoint_problems(teacher_copy) == []


def test_truncated_weights_are_found_without_loading(teacher_copy):
    weights = next(teacher_copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    (problem,) = preflight.checkpoint_problems(teacher_copy)
    assert weights.name in problem and "truncated or corrupt" in problem


def test_shape_and_missing_tensors_and_tokenizer_are_named(teacher_copy):
    import json

    config = json.loads((teacher_copy / "config.json").read_text())
    config["llm_config"]["intermediate_size"] += 8
    (teacher_copy / "config.json").write_text(json.dumps(config))
    (teacher_copy / "tokenizer.json").unlink()
    problems = preflight.checkpoint_problems(teacher_copy)
    assert any("feed_forward.w1.weight" in p and "expected" in p for p in problems), problems
    assert any("tokenizer does not load" in p for p in problems), problems
    with pytest.raises(PreflightError, match="cannot start"):
        preflight.check(checkpoints=[teacher_copy])


def test_missing_checkpoint_folder(tmp_path):
    assert preflight.checkpoint_problems(tmp_path / "nope") == [f"checkpoint directory not found: {tmp_path / 'nope'}"]
