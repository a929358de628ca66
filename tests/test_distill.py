"""Distillation (paper Sec. 4.1-4.4): trainable sets per stage, losses, stage chaining, resumable runs."""

from __future__ import annotations

import json

import pytest
import torch

from mmmamba_bench.model.stack import MMMambaChatModel
from mmmamba_bench.processor import Batch
from mmmamba_bench.seeding import seed_state_dict
from mmmamba_bench.train.distill import (StageChainError, check_chain, distill, kl_loss, layerwise_loss,
                                         prepare_stage, stage_trainable)
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
    before_names = [n for n, _ in student.named_parameters()]
    trainable = stage_trainable(student, stage)
    mamba = [i for i, t in enumerate(KIND_LAYOUTS["hybrid"]) if t == "mamba2"]
    prefixes = [("embedding_model.encoder.1" if i == 1 else f"language_model.model.layers.{i - 2}") + ".attention"
                for i in mamba]
    assert set(trainable.params) == {f"{p}.{n}" for p in prefixes for n in MIXER + ("wvkqgdt.weight",)}
    by_id = {id(p): n for n, p in trainable.params.items()}
    assert sorted(by_id[id(p)] for p in student.parameters() if p.requires_grad) == sorted(trainable.params)
    trainable.close()
    assert {n for n, p in student.named_parameters()} == set(before_names)  # masks removed: released names again

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


def _train_prepared(trainable, objective, batch, tmp_path, steps=2):
    cfg = StageConfig(steps=steps, batch_size=2, lr=1e-2, warmup_frac=0.0, decay_frac=0.0)
    tokens = batch.attention_mask.sum().float()
    try:
        return train(name="shared", trainable=trainable, loss_fn=lambda b: objective(b, tokens),
                     stream=FixedStream(batch), cfg=cfg, checkpoint=TrainCheckpoint(tmp_path, "t"),
                     checkpoint_every=100, progress=False)
    finally:
        trainable.close()


@pytest.mark.parametrize("stage", [1, 3])
def test_frozen_student_parameters_are_the_teachers_tensors(stage, tmp_path):
    """What the student inherits and no stage trains is held once (the teacher's tensors); training is bit for bit
    what it is with two copies, and the teacher does not change."""
    import copy

    teacher, student, batch = teacher_student("hybrid")
    twin_teacher, twin = copy.deepcopy(teacher), copy.deepcopy(student)
    teacher_before = {n: t.clone() for n, t in teacher.state_dict().items()}
    trainable, objective, shared = prepare_stage(teacher, student, stage, 1.0, master_fp32=False,
                                                 checkpointing=False)
    mine = dict(teacher.named_parameters())
    trained = {id(p) for p in trainable.params.values()}
    frozen = [(n, p) for n, p in student.named_parameters() if id(p) not in trained and n in mine]
    # MLPs, norms, embeddings, vision, LM head, o_proj, the hybrid's attention layers
    assert len(frozen) > 20 and all(p is mine[n] for n, p in frozen)
    assert shared.tensors == len(frozen) and not shared.differing
    assert shared.bytes == sum(p.numel() * p.element_size() for _, p in frozen)
    assert not any(p is mine.get(n) for n, p in trainable.params.items())
    losses = _train_prepared(trainable, objective, batch, tmp_path / "shared")

    twin_trainable, twin_objective, none = prepare_stage(twin_teacher, twin, stage, 1.0, master_fp32=False,
                                                         checkpointing=False, share_frozen=False)
    assert none.tensors == 0 and not any(p is q for p in twin.parameters() for q in twin_teacher.parameters())
    assert _train_prepared(twin_trainable, twin_objective, batch, tmp_path / "two") == losses
    got, want = student.state_dict(), twin.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert all(torch.equal(t, teacher_before[n]) for n, t in teacher.state_dict().items())


def test_a_frozen_parameter_unlike_the_teachers_keeps_its_own_copy():
    teacher, student, _ = teacher_student("hybrid")
    name = "language_model.model.layers.0.feed_forward.w1.weight"
    with torch.no_grad():
        student.get_parameter(name)[0, 0] += 1.0
    _, _, shared = prepare_stage(teacher, student, 1, 1.0, master_fp32=False, checkpointing=False)
    assert shared.differing == (name,)
    assert student.get_parameter(name) is not teacher.get_parameter(name)
    assert not torch.equal(student.get_parameter(name), teacher.get_parameter(name))


def test_stage1_layerwise_loss_decreases(tmp_path):
    teacher, student, batch = teacher_student("linear")
    losses = run_steps(1, teacher, student, batch, tmp_path, steps=8, lr=3e-3)
    assert losses[-1] < 0.9 * losses[0], losses


def padded_pair(teacher: MMMambaChatModel):
    """A left-padded two-row batch (row 1 is 3 text tokens shorter) and its two rows unpadded."""
    ids, pv = image_prompt(teacher, batch=2, text_len=7, seed=5)
    short = ids[1, :-3]  # [L - 3]
    padded = torch.cat([torch.zeros(3, dtype=ids.dtype), short])  # id 0 on padding, masked out
    mask = torch.ones(2, ids.shape[1], dtype=torch.long)
    mask[1, :3] = 0
    batch = Batch(torch.stack([ids[0], padded]), mask, pv, None)
    rows = [(ids[0][None], pv[0:1]), (short[None], pv[1:2])]  # (input_ids [1, L_b], pixel_values [1, 3, S, S])
    return batch, rows


def test_stage3_kl_is_the_per_real_token_average_computed_by_hand():
    """KL(teacher || student) on a padded batch = the mean over every real token of both rows, each row run alone
    without padding, in float64 (a loss averaged per row, over padding, or per batch would differ)."""
    teacher, student, _ = teacher_student("hybrid")
    batch, rows = padded_pair(teacher)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids, pv in rows:
            p = torch.log_softmax(teacher(ids, pv).logits[0].double(), -1)  # [L_b, V]
            q = torch.log_softmax(student(ids, pv).logits[0].double(), -1)
            for t in range(ids.shape[1]):
                total += sum(float(p[t, v].exp() * (p[t, v] - q[t, v])) for v in range(p.shape[1]))
            tokens += ids.shape[1]
    want = total / tokens
    got = float(kl_loss(teacher, student, batch).detach())
    assert want > 1e-3  # the seeded student differs from its teacher
    # float32 forward passes, batched with padding vs. alone: agreement to float32 accumulation error
    assert got == pytest.approx(want, rel=1e-4)


def test_stage1_layerwise_loss_computed_by_hand():
    """Stages 1-2: sum over Mamba-2 layers of the MSE between the student mixer's output on the teacher's normed
    layer input and the teacher attention's output, over real tokens and hidden units; rows run alone, unpadded."""
    teacher, student, _ = teacher_student("hybrid")
    batch, rows = padded_pair(teacher)
    layers = [i for i, layer in enumerate(student.layers) if layer.kind == "mamba2"]
    sse = {i: 0.0 for i in layers}
    count = 0
    with torch.no_grad():
        for ids, pv in rows:
            seen = {}
            handles = [teacher.layers[i].attention.register_forward_hook(
                lambda m, a, out, i=i: seen.__setitem__(i, (a[0], out))) for i in layers]
            teacher(ids, pv)
            for h in handles:
                h.remove()
            for i in layers:
                x, target = seen[i]  # [1, L_b, H]
                ctx = student.context(0 if i < student.num_embedding_layers else 1, 1, ids.shape[1], 0, None, False)
                y = student.layers[i].attention(x, ctx)
                sse[i] += float(((y.double() - target.double()) ** 2).sum())
            count += ids.shape[1] * x.shape[-1]
    want = sum(sse[i] / count for i in layers)
    got = float(layerwise_loss(teacher, student, batch).detach())
    assert len(layers) >= 2 and want > 0
    assert got == pytest.approx(want, rel=1e-4)
    assert float(layerwise_loss(teacher, student, batch, scale=3.0).detach()) == pytest.approx(3 * want, rel=1e-4)


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
