"""Distillation over several processes (accelerate, gloo on CPU) and with gradient accumulation.

A step's gradient is the global batch's per-token mean whatever the split (mmmamba_bench.train.parallel), so one
process with batch 2b, one process accumulating two micro-batches of b, and two processes with b each give the same
trained parameters up to float32 rounding; a run killed with -9 resumes, also on another number of processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmmamba_bench.train.distill import distill
from mmmamba_bench.train.parallel import StepPlan
from tests.test_distill import TINY_DISTILL

# the same chain on InternVL-format data (mmmamba_bench.data.sft_synth: every kind of bad row once)
SFT_DISTILL = {**TINY_DISTILL, "data": {"source": "internvl", "max_tiles": 1, "max_tokens": 512}}


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    from mmmamba_bench.data.sft_synth import write_sft_dataset

    return write_sft_dataset(tmp_path_factory.mktemp("sft"), rows=16, seed=0, image_size=32)

# the console script a user types. Two CPU processes (gloo) are `ACCELERATE_USE_CPU=true accelerate launch
# --multi_gpu --num_processes 2`: accelerate 1.15's `--cpu --num_processes 2` starts ONE process (its simple launcher;
# several CPU processes need mpirun), which the stage records then show as processes: 1.
ACCELERATE_SCRIPT = [str(Path(sys.executable).parent / "accelerate"), "launch"]
CPU_2 = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
         "--mixed_precision", "no", "--dynamo_backend", "no"]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def stage_weights(out: Path, stage: int) -> dict[str, torch.Tensor]:
    return weights(out.with_name(out.name + ".stages") / f"stage{stage}")


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], changed: dict | None = None):
    """Equal up to float32 rounding of sums taken in another order (amplified a little by Adam's normalisation):
    relative 1e-4 of each tensor's scale; tensors that did not train are bit-identical."""
    assert a.keys() == b.keys()
    for k in a:
        if changed is not None and torch.equal(changed[k], a[k]):
            assert torch.equal(a[k], b[k]), k
            continue
        scale = float(a[k].abs().max()) or 1.0
        assert float((a[k] - b[k]).abs().max()) <= 1e-4 * scale, (k, float((a[k] - b[k]).abs().max()), scale)


def test_step_plan_splits_the_global_batch_the_same_way_for_any_number_of_processes():
    one = StepPlan.make(8, 1)
    two = StepPlan.make(8, 2, micro_batch=2)
    assert (one.micro_batch, one.accumulation) == (8, 1) and (two.micro_batch, two.accumulation) == (2, 2)
    rows_two = sorted(k for r in range(2) for m in range(2) for k in two.positions(3, r, m))
    assert rows_two == list(one.positions(3, 0, 0)) == list(range(24, 32))
    with pytest.raises(ValueError, match="does not divide the global batch 8"):
        StepPlan.make(8, 2, micro_batch=3)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        StepPlan.make(8, 3)


def test_gradient_accumulation_gives_the_parameters_of_the_whole_batch(tiny_teacher, tiny_data, tmp_path):
    """One process: batch 4 at once == two accumulated micro-batches of 2 == four of 1 (each loss divided by the
    global batch's token count, the gradients summed)."""
    outs = {}
    for micro in (None, 2, 1):
        outs[micro] = distill(TINY_DISTILL, tiny_teacher, tmp_path / f"m{micro}", data_dir=tiny_data,
                              progress=False, micro_batch=micro)
    seeded = weights(outs[None].with_name(f"m{None}.stages") / "seeded")
    for micro in (2, 1):
        for k in (1, 2, 3):
            assert_close_weights(stage_weights(outs[None], k), stage_weights(outs[micro], k), seeded)
        record = json.loads((outs[micro].with_name(f"m{micro}.stages") / "stage3" / "distill_state.json").read_text())
        assert record["engine"]["accumulation"] == 4 // micro and record["engine"]["micro_batch"] == micro
    with pytest.raises(ValueError, match="micro-batch 3 x 1 processes does not divide the global batch 4"):
        distill(TINY_DISTILL, tiny_teacher, tmp_path / "bad", data_dir=tiny_data, progress=False, micro_batch=3)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.stages").exists()


def test_internvl_data_trains_and_every_bad_row_is_counted_once(tiny_teacher, sft_data, tmp_path, caplog):
    """A chain on a meta JSON with every kind of bad row: the rows are skipped (logged with file:line), each
    counted once however often the epochs meet it, and the counts land in every stage record."""
    import logging
    import math

    from mmmamba_bench.data.sft_synth import expected_bad_rows
    from mmmamba_bench.processor import Processor
    from mmmamba_bench.train.sft import SFTData

    epoch = len(SFTData.open(sft_data, Processor.from_pretrained(tiny_teacher, max_tiles=1), max_tokens=512))
    steps = math.ceil(epoch / 4) + 1  # every stage reads a whole epoch and more
    stage = {**TINY_DISTILL["stage1"], "steps": steps}
    recipe = {**SFT_DISTILL, "stage1": stage, "stage2": stage, "stage3": stage, "checkpoint_every": 100}
    with caplog.at_level(logging.WARNING):
        out = distill(recipe, tiny_teacher, tmp_path / "sft", data_dir=sft_data, progress=False)
    for k in (1, 2, 3):
        record = json.loads((tmp_path / "sft.stages" / f"stage{k}" / "distill_state.json").read_text())
        assert record["skipped_rows"] == expected_bad_rows(), k
    assert "train.jsonl:" in caplog.text and "row skipped (unreadable_image)" in caplog.text
    # the data's identity is recorded; a folder where the recipe wants InternVL data is refused before any work
    assert json.loads((out / "distill_state.json").read_text())["data_sha256"] == SFTData.open(
        sft_data, Processor.from_pretrained(tiny_teacher, max_tiles=1), max_tokens=512).sha256
    with pytest.raises(ValueError, match="data.source is 'internvl'"):
        distill(SFT_DISTILL, tiny_teacher, tmp_path / "wrong", data_dir=sft_data.parent, progress=False)
    assert not (tmp_path / "wrong.stages").exists()


def _launch(tmp_path: Path, args: list[str], processes: int, recipe_dict: dict = SFT_DISTILL) -> subprocess.Popen:
    recipe = tmp_path / "recipe.yaml"
    if not recipe.exists():
        recipe.write_text(yaml.safe_dump(recipe_dict))
    base = ["-m", "mmmamba_bench", "distill", "--recipe", str(recipe), "--no-progress", *args]
    cmd = [*ACCELERATE_SCRIPT, *CPU_2, *base] if processes == 2 else [sys.executable, *base]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the launcher and every process under it (torch's elastic agent starts the workers in their own
    process groups, so killing the launcher's group alone leaves them running)."""
    import psutil

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def kill_at_checkpoint(proc: subprocess.Popen, work: Path, pattern: str) -> None:
    """kill -9 the whole run (:func:`kill_tree`) once a checkpoint folder matching ``pattern`` appears in ``work``."""
    deadline = time.time() + 600
    while not any(work.glob(pattern)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill_tree(proc)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_two_cpu_processes_train_what_one_does_and_a_killed_run_resumes_on_one(tiny_teacher, sft_data, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m mmmamba_bench distill ... --micro-batch 2` on CPU (gloo)
    on InternVL-format data with bad rows == one process with batch 4; a two-process run killed with -9 in stage 2
    resumes on ONE process, ends where the others did and counts the bad rows of both runs once."""
    from mmmamba_bench.data.sft_synth import expected_bad_rows

    one = distill(SFT_DISTILL, tiny_teacher, tmp_path / "one", data_dir=sft_data, progress=False)
    seeded = weights(tmp_path / "one.stages" / "seeded")
    common = ["--teacher", str(tiny_teacher), "--data", str(sft_data), "--micro-batch", "2"]
    out = _finish(_launch(tmp_path, [*common, "--out", str(tmp_path / "two")], 2))
    assert out.count(f"wrote {tmp_path / 'two'}") == 1  # rank 0 reports
    records = [json.loads((tmp_path / f"{run}.stages" / "stage3" / "distill_state.json").read_text())
               for run in ("one", "two")]
    assert records[1]["engine"]["processes"] == 2 and records[1]["engine"]["accumulation"] == 1
    assert records[1]["skipped_rows"] == records[0]["skipped_rows"]  # the same rows met, each counted once
    assert sum(records[0]["skipped_rows"].values()) >= 1
    assert set(records[0]["skipped_rows"]) <= set(expected_bad_rows())
    for k in (1, 2, 3):
        assert_close_weights(stage_weights(one, k), stage_weights(tmp_path / "two", k), seeded)

    # kill -9 the whole two-process run once stage 2 has a checkpoint past step 1, then resume on one process
    proc = _launch(tmp_path, [*common, "--out", str(tmp_path / "cut")], 2)
    kill_at_checkpoint(proc, tmp_path / "cut.stages" / ".work" / "stage2", "checkpoint-0000000[2-9]")
    assert not (tmp_path / "cut").exists()
    out = _finish(_launch(tmp_path, [*common[:-2], "--out", str(tmp_path / "cut")], 1))
    assert "stage 1 already finished" in out and "stage2: resuming at step" in out, out[-2000:]
    assert_close_weights(weights(one), weights(tmp_path / "cut"), seeded)
    cut = json.loads((tmp_path / "cut.stages" / "stage3" / "distill_state.json").read_text())
    assert cut["skipped_rows"] == records[0]["skipped_rows"]


def test_a_first_loss_outside_the_recipes_range_stops_the_stage_with_a_clear_message(tiny_teacher, tiny_data,
                                                                                     tmp_path):
    """first_losses: a stage whose first losses fall far outside the expected range stops (an unchained stage 3 in
    the reference starts near 8,000 in its normalisation: reference issue #4)."""
    recipe = {**TINY_DISTILL, "first_losses": {"steps": 2, "stage3": [0.0, 1e-9]}}
    with pytest.raises(RuntimeError, match=r"stage3: the loss of step 0 is .* far outside the expected range "
                                           r"\[0, 1e-09\] .*first_losses.stage3"):
        distill(recipe, tiny_teacher, tmp_path / "out", data_dir=tiny_data, progress=False)
    assert (tmp_path / "out.stages" / "stage2" / "distill_state.json").is_file()  # the stages before it finished
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["linear", "hybrid"])
def test_the_paper_recipes_read_internvl_data_in_bf16_and_split_over_1_to_8_gpus(kind):
    from mmmamba_bench.assets import recipes_dir
    from mmmamba_bench.train.recipe import DistillRecipe, load_recipe

    recipe = load_recipe(recipes_dir() / f"mmmamba-{kind}.yaml", DistillRecipe)
    assert (recipe.data.source, recipe.data.max_tokens, recipe.dtype) == ("internvl", 8192, "bfloat16")
    assert [recipe.stage(k).batch_size for k in (1, 2, 3)] == [128, 128, 64]
    for gpus in (1, 2, 4, 8):
        plans = [StepPlan.make(recipe.stage(k).batch_size, gpus, recipe.micro_batch_size) for k in (1, 2, 3)]
        assert [p.accumulation * gpus for p in plans] == [128, 128, 64]  # micro-batch 1


@pytest.mark.slow
def test_zero2_checkpoints_resume_bit_identically_also_with_the_other_engine(tiny_teacher, tiny_data, tmp_path):
    """DeepSpeed ZeRO-2 through accelerate (on CPU: DS_ACCELERATOR=cpu): the checkpoint gathered from ZeRO's
    partitions resumes a run killed with -9, under ZeRO-2 again or as a plain process, to exactly the weights of an
    uninterrupted ZeRO-2 run (float32). Needs deepspeed (in the GPU lock; skipped where it is not installed)."""
    pytest.importorskip("deepspeed")
    stage = {**TINY_DISTILL["stage1"], "steps": 24}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_DISTILL, "stage1": stage, "stage2": stage, "stage3": stage,
                                      "checkpoint_every": 2}))
    zero2 = [*ACCELERATE_SCRIPT, "--num_processes", "1", "--num_machines", "1", "--main_process_port", "0",
             "--dynamo_backend", "no", "--use_deepspeed", "--deepspeed_config_file",
             str(Path(__file__).resolve().parents[1] / "distill" / "zero2.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"})}
    env.pop("ACCELERATE_USE_CPU", None)

    def run(out: str, zero: bool) -> subprocess.Popen:
        args = ["-m", "mmmamba_bench", "distill", "--recipe", str(recipe), "--teacher", str(tiny_teacher), "--data",
                str(tiny_data), "--out", str(tmp_path / out), "--no-progress", "--micro-batch", "2"]
        return subprocess.Popen([*zero2, *args] if zero else [sys.executable, *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    _finish(run("full", True))
    record = json.loads((tmp_path / "full.stages" / "stage2" / "distill_state.json").read_text())
    assert record["engine"]["distributed"] == "DistributedType.DEEPSPEED" and record["engine"]["accumulation"] == 2
    for name, resume_with_zero in (("zero", True), ("plain", False)):
        proc = run(name, True)
        kill_at_checkpoint(proc, tmp_path / f"{name}.stages" / ".work" / "stage2", "checkpoint-0000001[0-9]")
        out = _finish(run(name, resume_with_zero))
        assert "stage2: resuming at step 1" in out, out[-2000:]
        a, b = weights(tmp_path / "full"), weights(tmp_path / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
