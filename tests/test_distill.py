"""Distillation (paper Sec. 4.1-4.4): trainable sets per stage, losses, stage chaining, resumable runs."""

from __future__ import annotations

import json

import pytest
import torch

from mmmamba_bench.model.stack import MMMambaChatModel
from mmmamba_bench.processor import Batch
from mmmamba_bench.seeding import seed_state_dict
from mmmamba_bench.train.distill import (StageChainError, check_chain, distill, kl_loss, layerwise_loss,
                                         stage_trainable)
from mmmamba_bench.train.loop import train
from mmmamba_bench.train.recipe import StageConfig
from mmmamba_bench.train.state import TrainCheckpoint
from tests.helpers import KIND_LAYOUTS, image_prompt, random_model
from tests.tiny_suite import TINY_TASKS

STAGE = {"steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_frac": 0.0, "decay_frac": 0.0}
TINY_DISTILL = {"seed": 0, "layout": "hybrid", "data": {"tasks": TINY_TASKS},
                "stage1": STAGE, "stage2": STAGE, "stage3": STAGE,
                "checkpoint_every": 1, "threads": None, "eval": {"items_per_task": 0}}


class FixedStream:
    """The same batch at every step."""

    def __init__(self, batch: Batch):
        self.b = batch

    def batch(self, step: int) -> Batch:
        return self.b

    def position(self, step: int) -> tuple[int, int]:
        return 0, step


def teacher_student(layout: str = "hybrid"):
    teacher = random_model("transformer", dtype=torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    cfg, state = seed_state_dict(teacher.config, teacher.state_dict(), KIND_LAYOUTS[layout])
    student = MMMambaChatModel(cfg, ssd_backend="torch")
    student.load_state_dict(state)
    ids, pv = image_prompt(teacher, batch=2, text_len=6)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    return teacher, student, Batch(ids, mask, pv, None)


def run_steps(stage, teacher, student, batch, tmp_path, steps=2, lr=1e-2):
    trainable = stage_trainable(student, stage)
    loss_fn = (lambda b: kl_loss(teacher, student, b)) if stage == 3 else (lambda b: layerwise_loss(teacher, student, b))
    cfg = StageConfig(steps=steps, batch_size=2, lr=lr, warmup_frac=0.0, decay_frac=0.0)
    try:
        return train(name=f"s{stage}", trainable=trainable, loss_fn=loss_fn, stream=FixedStream(batch), cfg=cfg,
                     checkpoint=TrainCheckpoint(tmp_path / f"ck{stage}", "t"), checkpoint_every=100, progress=False)
    finally:
        trainable.close()


MIXER = ("conv1d.weight", "conv1d.bias", "dt_bias", "A_log_bias", "g_norm_swish_gate.weight")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_exactly_the_papers_parameters(stage, tmp_path):
    teacher, student, batch = teacher_student("hybrid")
    trainable = stage_trainable(student, stage)
    mamba = [i for i, t in enumerate(KIND_LAYOUTS["hybrid"]) if t == "mamba2"]
    prefixes = [("embedding_model.encoder.1" if i == 1 else f"language_model.model.layers.{i - 2}") + ".attention"
                for i in mamba]
    assert set(trainable.params) == {f"{p}.{n}" for p in prefixes for n in MIXER + ("wvkqgdt.weight",)}
    assert {n for n, p in student.named_parameters() if p.requires_grad} == set(trainable.params)
    trainable.close()

    before = {n: t.clone() for n, t in student.state_dict().items()}
    run_steps(stage, teacher, student, batch, tmp_path)
    after = student.state_dict()
    for name in before:
        if name not in trainable.params:  # MLPs, norms, embeddings, o_proj, LM head, hybrid attention layers
            assert torch.equal(before[name], after[name]), name
    for prefix, i in zip(prefixes, mamba):
        for n in MIXER:
            assert not torch.equal(before[f"{prefix}.{n}"], after[f"{prefix}.{n}"]), f"{prefix}.{n}"
        rows = student.layers[i].attention.row_slices()
        w0, w1 = before[f"{prefix}.wvkqgdt.weight"], after[f"{prefix}.wvkqgdt.weight"]
        for r in ("g", "dt"):
            assert (w0[rows[r]] != w1[rows[r]]).any(), r
        for r in ("v", "k", "q"):  # W_Q, W_K, W_V: frozen in stage 1 (Sec. 4.2), trained from stage 2 (Sec. 4.3)
            assert torch.equal(w0[rows[r]], w1[rows[r]]) == (stage == 1), (stage, r)
    attention_layers = [i for i, t in enumerate(KIND_LAYOUTS["hybrid"]) if t == "mha"]
    assert all(student.layers[i].kind == "mha" for i in attention_layers)


def test_stage1_layerwise_loss_decreases(tmp_path):
    teacher, student, batch = teacher_student("linear")
    losses = run_steps(1, teacher, student, batch, tmp_path, steps=8, lr=3e-3)
    assert losses[-1] < 0.9 * losses[0], losses


def test_stage3_kl_is_zero_for_identical_models():
    teacher, _, batch = teacher_student("hybrid")
    assert float(kl_loss(teacher, teacher, batch)) == pytest.approx(0.0, abs=1e-6)


def test_stage_chain_is_enforced(tiny_teacher, tiny_data, tmp_path):
    out = distill(TINY_DISTILL, tiny_teacher, tmp_path / "s1", stages="1", data_dir=tiny_data, progress=False)
    stage1 = out.with_name("s1.stages") / "stage1"
    assert json.loads((stage1 / "distill_state.json").read_text())["stage"] == 1
    with pytest.raises(StageChainError, match="must start from stage 2's output"):
        check_chain(3, stage1)
    with pytest.raises(StageChainError, match="skip a stage"):
        distill(TINY_DISTILL, tiny_teacher, tmp_path / "s3", stages=[3], data_dir=tiny_data, progress=False)
    with pytest.raises(StageChainError, match="no distill_state.json"):
        check_chain(1, tiny_teacher.with_name("nowhere"))
    # an explicit ablation chain (paper Table 3, S1+S3) is allowed and recorded
    out13 = distill(TINY_DISTILL, tiny_teacher, tmp_path / "s13", stages="1,3", allow_skip=True, data_dir=tiny_data,
                    progress=False)
    record = json.loads((out13 / "distill_state.json").read_text())
    assert record["chain"] == [0, 1, 3] and record["input"]["stage"] == 1


def test_interrupted_distillation_resumes_bit_identically(tiny_teacher, tiny_data, tmp_path):
    from safetensors.torch import load_file

    full = distill(TINY_DISTILL, tiny_teacher, tmp_path / "full", data_dir=tiny_data, progress=False)

    calls = []

    def interrupt(step, loss):
        calls.append(step)
        if len(calls) == 5:  # stage 2, step 2 of 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(TINY_DISTILL, tiny_teacher, tmp_path / "cut", data_dir=tiny_data, progress=False, callback=interrupt)
    assert not (tmp_path / "cut").exists()  # the output appears only when finished
    seen = []
    cut = distill(TINY_DISTILL, tiny_teacher, tmp_path / "cut", data_dir=tiny_data, progress=False,
                  callback=lambda step, loss: seen.append(step))
    assert seen == [3, 1, 2, 3]  # stage 1 skipped, stage 2 continues after step 2, then all of stage 3
    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "distill_state.json").read_text())["chain"] == [0, 1, 2, 3]
    # rerunning a finished distillation returns at once; another recipe into the same place is refused
    assert distill(TINY_DISTILL, tiny_teacher, tmp_path / "cut", data_dir=tiny_data, progress=False) == cut
    with pytest.raises(FileExistsError):
        distill({**TINY_DISTILL, "seed": 3}, tiny_teacher, tmp_path / "cut", data_dir=tiny_data, progress=False)


def test_max_steps_caps_every_stage_and_is_recorded(tiny_teacher, tiny_data, tmp_path):
    from mmmamba_bench.train.data import EncodedCache

    steps = []
    encoded = EncodedCache()
    out = distill(TINY_DISTILL, tiny_teacher, tmp_path / "capped", data_dir=tiny_data, progress=False, max_steps=2,
                  encoded=encoded, callback=lambda step, loss: steps.append(step))
    assert steps == [1, 2, 1, 2, 1, 2]  # 2 of each stage's 3 steps
    stages = out.with_name("capped.stages")
    for k in (1, 2, 3):
        record = json.loads((stages / f"stage{k}" / "distill_state.json").read_text())
        assert (record["steps"], record["max_steps"]) == (2, 2)
    assert json.loads((out / "distill_state.json").read_text())["max_steps"] == 2
    # a capped run is another run: the uncapped recipe does not pass for it, nor resume it
    with pytest.raises(FileExistsError, match="another chain or recipe"):
        distill(TINY_DISTILL, tiny_teacher, out, data_dir=tiny_data, progress=False)
    # the encoded training data was kept for the next student of the same teacher and data
    (items,) = encoded._store.values()
    steps.clear()
    distill({**TINY_DISTILL, "layout": "linear"}, tiny_teacher, tmp_path / "linear", data_dir=tiny_data,
            progress=False, max_steps=1, encoded=encoded, callback=lambda step, loss: steps.append(step))
    assert steps == [1, 1, 1] and list(encoded._store.values()) == [items]
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        distill(TINY_DISTILL, tiny_teacher, tmp_path / "zero", data_dir=tiny_data, progress=False, max_steps=0)


def test_max_threads_caps_the_recipes_threads(tiny_teacher, tiny_data, tmp_path):
    seen = []
    before = torch.get_num_threads()
    try:
        distill({**TINY_DISTILL, "threads": 2}, tiny_teacher, tmp_path / "one", data_dir=tiny_data, progress=False,
                max_steps=1, max_threads=1, callback=lambda step, loss: seen.append(torch.get_num_threads()))
    finally:
        torch.set_num_threads(before)  # distill sets the process's threads
    assert seen == [1, 1, 1]
    with pytest.raises(ValueError, match="max_threads must be at least 1"):
        distill(TINY_DISTILL, tiny_teacher, tmp_path / "zero", data_dir=tiny_data, progress=False, max_threads=0)
