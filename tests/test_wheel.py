"""The package installs like one: a wheel built from this checkout, installed into a fresh virtual environment with the
locked dependencies, runs from an empty directory far from the checkout (its task YAMLs, model cards and the
embedded teacher come from the wheel's package data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _uv() -> str:
    from uv import find_uv_bin  # uv is part of the [dev] extra, so of the locked test environment

    return find_uv_bin()


def _clean_env(tmp: Path) -> dict[str, str]:
    """An environment that cannot see the checkout: no PYTHONPATH, no asset override, caches under ``tmp``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MMMAMBA_BENCH_HOME", "MMMAMBA_BENCH_MINI_DATA", "VIRTUAL_ENV")}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp / "hf"), PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtual environment holding requirements/cpu.txt and the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    uv = _uv()
    subprocess.run([uv, "build", "--quiet", "--wheel", "--out-dir", str(tmp / "dist"), "--build-constraint",
                    str(REPO / "requirements" / "build.txt"), str(REPO)], check=True)
    wheels = sorted((tmp / "dist").glob("mmmamba_bench-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    env = {**os.environ, "PATH": f"{Path(uv).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, str(REPO / "requirements" / "lock.py"), "install",
                    str(REPO / "requirements" / "cpu.txt"), "--python", str(python)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(wheels[0])],
                   check=True)
    return tmp / "venv" / "bin"


def test_wheel_carries_the_assets_and_no_generated_data(installed):
    import zipfile

    wheel = next((installed.parent.parent / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for tracked in subprocess.run(["git", "ls-files", "tasks/mini", "tasks/real", "models", "distill",
                                   "reports/paper"], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.split():
        assert f"mmmamba_bench/_assets/{tracked}" in names, f"{tracked} is not in the wheel"
    assert not [n for n in names if "/mini/data/" in n or "__pycache__" in n]


def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path, mini_suite):
    env = _clean_env(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([installed / "python", "-c", "import mmmamba_bench, mmmamba_bench.assets as a; "
                            "print(mmmamba_bench.__file__); print(a.asset_root())"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    venv = installed.parent
    assert all(Path(p).is_relative_to(venv) for p in where), where  # not the checkout

    helped = subprocess.run([installed / "mmmamba-bench", "--help"], cwd=work, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "eval" in helped.stdout

    data_dir, _ = mini_suite  # generated once per test run; the wheel's default is a user cache
    env["MMMAMBA_BENCH_MINI_DATA"] = str(data_dir)
    run = subprocess.run([installed / "mmmamba-bench", "eval", "--model", "demo-teacher", "--tasks", "mini",
                          "--limit", "4", "--output", "OUT", "--device", "cpu"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted((work / "OUT").rglob("*_results.json"))
    assert len(results) == 1, results
    scores = json.loads(results[0].read_text())["results"]
    assert set(scores) >= {"mini_mme", "mini_mmbench", "mini_pope", "mini_seed", "mini_sqa", "mini_textvqa",
                           "mini_gqa"}
    assert sorted(p.name for p in work.iterdir()) == ["OUT"]  # nothing written beside the output
