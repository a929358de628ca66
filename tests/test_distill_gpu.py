"""Distillation on a GPU: bf16 mixed precision, DeepSpeed ZeRO-2 through accelerate, and resuming a ZeRO run from
the project's own checkpoints (the optimizer state gathered from ZeRO's partitions: mmmamba_bench.train.zero).

GPU tests (run through the device tool): skipped without CUDA or DeepSpeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_distill import TINY_DISTILL
from tests.test_distill_parallel import ACCELERATE_SCRIPT, kill_at_checkpoint, weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = Path(__file__).resolve().parents[1]
STAGE = {"steps": 20, "batch_size": 4, "lr": 1e-3, "warmup_frac": 0.0, "decay_frac": 0.0}
GPU_DISTILL = {**TINY_DISTILL, "device": "cuda", "dtype": "bfloat16", "stage1": STAGE, "stage2": STAGE,
               "stage3": STAGE, "checkpoint_every": 5}
ZERO2 = ["--num_processes", "1", "--num_machines", "1", "--main_process_port", "0", "--use_deepspeed",
         "--deepspeed_config_file", str(ROOT / "distill" / "zero2.json"), "--mixed_precision", "bf16",
         "--dynamo_backend", "no"]


def _run(tmp_path: Path, out: str, zero: bool, tiny_teacher: Path, tiny_data: Path) -> subprocess.Popen:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(GPU_DISTILL))
    args = ["-m", "mmmamba_bench", "distill", "--recipe", str(recipe), "--teacher", str(tiny_teacher), "--data",
            str(tiny_data), "--out", str(tmp_path / out), "--no-progress", "--micro-batch", "2"]
    cmd = [*ACCELERATE_SCRIPT, *ZERO2, *args] if zero else [sys.executable, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _ok(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _close(a: dict, b: dict, rtol: float) -> float:
    worst = 0.0
    for k in a:
        scale = float(a[k].float().abs().max()) or 1.0
        worst = max(worst, float((a[k].float() - b[k].float()).abs().max()) / scale)
    assert worst <= rtol, worst
    return worst


def test_zero2_run_trains_checkpoints_and_resumes_from_a_kill(tiny_teacher, tiny_data, tmp_path):
    """A bf16 ZeRO-2 run (one process, two accumulated micro-batches) killed with -9 in stage 2 resumes from the
    gathered checkpoint and ends where an uninterrupted ZeRO-2 run does; a plain (DDP-path) bf16 run of the same
    recipe lands close by (the engines round differently in bf16)."""
    pytest.importorskip("deepspeed")
    full = _ok(_run(tmp_path, "full", True, tiny_teacher, tiny_data))
    record = json.loads((tmp_path / "full.stages" / "stage2" / "distill_state.json").read_text())
    assert "DEEPSPEED" in record["engine"]["distributed"] and record["engine"]["accumulation"] == 2, full[-2000:]
    proc = _run(tmp_path, "cut", True, tiny_teacher, tiny_data)
    kill_at_checkpoint(proc, tmp_path / "cut.stages" / ".work" / "stage2", "checkpoint-000000[12]*")
    out = _ok(_run(tmp_path, "cut", True, tiny_teacher, tiny_data))
    assert "stage2: resuming at step" in out, out[-2000:]
    # bf16 weights; the same kernels on the same inputs, but atomics in the backward may add in another order
    print("zero-2 resumed vs uninterrupted, max rel diff:",
          _close(weights(tmp_path / "full"), weights(tmp_path / "cut"), 2e-2))
    plain = _ok(_run(tmp_path, "plain", False, tiny_teacher, tiny_data))
    record = json.loads((tmp_path / "plain.stages" / "stage3" / "distill_state.json").read_text())
    assert record["engine"]["mixed_precision"] == "bf16", plain[-2000:]
    print("plain bf16 vs zero-2, max rel diff:", _close(weights(tmp_path / "full"), weights(tmp_path / "plain"), 0.1))
