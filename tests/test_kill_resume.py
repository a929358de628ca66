"""kill -9 at the worst moments of ``train-teacher`` and ``distill``, then the same command again: the final weights
are bit-identical to an uninterrupted run's.

The commands run as subprocesses of the real CLI. A small driver kills its own process with SIGKILL just before or
just after the N-th ``os.rename`` / ``os.replace`` of the run (every publication of a training checkpoint, of a
stage's output and of the final model goes through one of them), so the kill lands exactly in the windows that used
to lose work: between writing a checkpoint's tensors and its record, and between publishing weights and their record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny_suite import TINY_TEACHER

pytestmark = pytest.mark.slow

DRIVER = """
import os, signal, sys
when, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def wrap(real):
    def publish(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return publish
if n > 0:
    os.rename, os.replace = wrap(os.rename), wrap(os.replace)
from mmmamba_bench.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run(argv: list[str], when: str = "never", n: int = 0) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, when, str(n), *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.returncode


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {f.name: load_file(str(f)) for f in sorted(folder.glob("*.safetensors"))}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for key in wa[name]:
            assert wa[name][key].equal(wb[name][key]), f"{name}:{key} differs"


def _kill_then_finish(argv: list[str], kills: list[tuple[str, int]]) -> None:
    """Run ``argv`` once per kill point, each run picking up what the killed one left; then to the end."""
    for when, n in kills:
        assert _run(argv, when, n) == -signal.SIGKILL, f"the kill {when} publication {n} did not happen"
    assert _run(argv) == 0


def test_kill_9_anywhere_in_train_teacher_resumes_bit_identical(tiny_data, tiny_teacher, tmp_path):
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(yaml.safe_dump(TINY_TEACHER))
    out = tmp_path / "teacher"
    argv = ["train-teacher", "--recipe", str(recipe), "--data", str(tiny_data), "--out", str(out), "--no-progress"]
    # A fresh run publishes checkpoint 3, checkpoint 6, the record (inside the teacher's temp folder), the teacher.
    # Counts restart in every process: a resumed run publishes only what is left.
    _kill_then_finish(argv, [("after", 1),    # checkpoint 3 published: the next run resumes from it
                             ("before", 1),   # checkpoint 6 written but not published: resume from 3 again
                             ("after", 2),    # checkpoint 6 published, the record written, the teacher not published
                             ("after", 2)])   # the teacher published, its work folder not yet removed
    _assert_same_weights(out, tiny_teacher)  # tiny_teacher: the same recipe and data, never interrupted
    assert not out.with_name(out.name + ".work").exists()


def test_kill_9_anywhere_in_distill_resumes_bit_identical(tiny_data, tiny_teacher, tmp_path):
    from mmmamba_bench.train.distill import distill
    from tests.test_distill import TINY_DISTILL  # the distillation recipe the other tests use

    recipe = tmp_path / "distill.yaml"
    recipe.write_text(yaml.safe_dump(TINY_DISTILL))
    reference = distill(TINY_DISTILL, tiny_teacher, tmp_path / "reference", data_dir=tiny_data, progress=False)
    out = tmp_path / "student"
    argv = ["distill", "--recipe", str(recipe), "--teacher", str(tiny_teacher), "--data", str(tiny_data),
            "--out", str(out), "--no-progress"]
    # A fresh run publishes: the seeded student's record and folder (2), then per stage 3 checkpoints, its record and
    # its folder (5 each), then the final record and folder (2). Counts restart in every process.
    _kill_then_finish(argv, [("after", 3),    # seeded published, stage 1's first checkpoint published
                             ("after", 3),    # stage 1 trained (resumed), its record written, not published
                             ("before", 2),   # again: the record rewritten, the output about to be published
                             ("after", 11)])  # stage 1 published, stages 2 and 3 trained, stage 3's record
                                              # written but not published
    _assert_same_weights(out, reference)
