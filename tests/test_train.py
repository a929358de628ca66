"""Training building blocks: recipes, the WSD schedule, row freezing, resumable checkpoints, the tiny teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmmamba_bench.train.loop import RowMask
from mmmamba_bench.train.recipe import DistillRecipe, RecipeError, TeacherRecipe, from_dict, load_recipe
from mmmamba_bench.train.schedule import wsd_factor
from mmmamba_bench.train.state import CorruptCheckpointError, TrainCheckpoint

from tests.tiny_suite import TINY_TASKS, TINY_TEACHER  # noqa: F401  (shared with test_distill)


# ---- recipes -----------------------------------------------------------------------------------------------------

def test_demo_and_paper_recipes_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "distill"
    assert load_recipe(root / "teacher-demo.yaml", TeacherRecipe).data.max_tiles == 1
    paper = {name: load_recipe(root / f"mmmamba-{name}.yaml", DistillRecipe) for name in ("linear", "hybrid")}
    for r in paper.values():  # paper Sec. 5.1
        assert [r.stage(k).batch_size for k in (1, 2, 3)] == [128, 128, 64]
        assert [r.stage(k).lr for k in (1, 2, 3)] == [1e-3, 5e-4, 5e-5]
        assert all(r.stage(k).steps == 20000 and r.stage(k).weight_decay == 0.05 and r.stage(k).grad_clip == 5.0
                   and r.stage(k).betas == [0.9, 0.999] and r.stage(k).warmup_frac == 0.1
                   and r.stage(k).decay_frac == 0.1 for k in (1, 2, 3))
    assert paper["hybrid"].layout == "hybrid" and paper["linear"].layout == "linear"
    for name in ("linear", "hybrid"):
        assert load_recipe(root / f"{name}-demo.yaml", DistillRecipe).layout == name


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown field"),
    ({"optim": {"batch_size": 8, "lr": 1e-3}}, "missing required field 'steps'"),
    ({"optim": {"steps": "ten", "batch_size": 8, "lr": 1e-3}}, "field 'steps'"),
    ({"optim": {"steps": 10, "batch_size": 8, "lr": 1e-3, "betas": [0.9]}}, "betas"),
])
def test_recipe_errors_name_the_problem(change, message):
    data = {**TINY_TEACHER, **change}
    with pytest.raises(RecipeError, match=message):
        from_dict(TeacherRecipe, data, "recipe").validate("recipe")


# ---- schedule ----------------------------------------------------------------------------------------------------

def test_wsd_schedule_values():
    f = [wsd_factor(s, 20, 0.1, 0.1) for s in range(20)]
    # 2 warm-up steps, 16 stable, 2 decay steps (paper: 10% / 80% / 10%)
    assert f[:2] == [0.5, 1.0]
    assert f[2:18] == [1.0] * 16
    assert f[18:] == pytest.approx([2 / 3, 1 / 3])
    assert wsd_factor(0, 1000) == pytest.approx(1 / 100) and wsd_factor(99, 1000) == 1.0
    assert wsd_factor(500, 1000) == 1.0 and wsd_factor(999, 1000) == pytest.approx(1 / 101)
    with pytest.raises(ValueError):
        wsd_factor(20, 20)


# ---- row freezing and checkpoints -------------------------------------------------------------------------------

def test_keep_rows_keeps_frozen_rows_bit_identical_under_adamw_decay():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 6, bias=False)
    before = lin.weight.detach().clone()
    rows = torch.tensor([False, False, True, True, False, True])
    mask, trained = RowMask.install(lin, "weight", rows)
    opt = torch.optim.AdamW([trained], lr=0.1, weight_decay=0.5)
    x = torch.randn(3, 4)
    for _ in range(3):
        opt.zero_grad()
        (lin(x).sum() ** 2).backward()
        assert not trained.grad[~rows].any()  # frozen rows get no gradient (nor a share of the clipping norm)
        opt.step()
        assert torch.equal(lin.weight.detach()[~rows], before[~rows])  # what the model reads
    assert not torch.equal(trained.detach()[~rows], before[~rows])  # AdamW's decay moved the unused copy...
    mask.remove()
    assert isinstance(lin.weight, torch.nn.Parameter)
    assert torch.equal(lin.weight.detach()[~rows], before[~rows])  # ...but never the weight that is kept
    assert (lin.weight.detach()[rows] != before[rows]).all()


def _payload(step: int) -> dict:
    """A real training payload: AdamW state after one step, RNG states, a data position."""
    import random

    from mmmamba_bench.train.state import rng_state

    torch.manual_seed(step)
    random.seed(step)
    w = torch.nn.Parameter(torch.randn(3, 2))
    b = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    (w.sum() * b.sum()).backward()
    opt.step()
    return {"step": step, "params": {"w": w.detach().clone(), "b": b.detach().clone()},
            "optimizer": opt.state_dict(), "rng": rng_state(), "data_position": [0, step]}


def _assert_same_payload(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and list(a["data_position"]) == list(b["data_position"])
    assert a["params"].keys() == b["params"].keys()
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys() and all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["rng"]["python"] == b["rng"]["python"]


def test_checkpoint_round_trip_without_pickle(tmp_path):
    ck = TrainCheckpoint(tmp_path, "tag-a")
    assert not ck.exists()
    saved = _payload(3)
    folder = ck.save(saved)
    assert folder.name == "checkpoint-00000003" and sorted(p.name for p in folder.iterdir()) == [
        "state.json", "tensors.safetensors"]
    loaded = ck.load()
    _assert_same_payload(saved, loaded)
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(3, 2))]},
                             {"params": [torch.nn.Parameter(torch.zeros(2))]}])
    opt.load_state_dict(loaded["optimizer"])  # what the training loop does with it
    assert opt.state_dict()["param_groups"] == saved["optimizer"]["param_groups"]
    ck.save(_payload(6))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000006"]  # the older one is gone, no temp left


def test_corrupt_foreign_or_pickled_checkpoint_is_refused(tmp_path):
    ck = TrainCheckpoint(tmp_path / "a", "tag-a")
    folder = ck.save(_payload(3))
    with pytest.raises(CorruptCheckpointError, match="another run"):
        TrainCheckpoint(tmp_path / "a", "tag-b").load()
    data = (folder / "tensors.safetensors").read_bytes()
    (folder / "tensors.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        ck.load()
    (folder / "state.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        ck.load()
    # an old-format pickle is never unpickled, whatever it holds
    legacy = tmp_path / "b"
    legacy.mkdir()
    (legacy / "train_state.pt").write_bytes(b"\x80\x04crafted pickle")
    with pytest.raises(CorruptCheckpointError, match="old pickled format, which is never loaded"):
        TrainCheckpoint(legacy, "tag-a").exists()


@pytest.mark.parametrize("fail_at", ["tensors", "meta", "rename"])
def test_a_crash_while_saving_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch, fail_at):
    import os

    import safetensors.torch

    from mmmamba_bench.train import state

    ck = TrainCheckpoint(tmp_path, "tag-a")
    first = _payload(3)
    ck.save(first)

    class Killed(BaseException):  # like a signal: not an Exception
        pass

    def boom(*a, **k):
        raise Killed

    if fail_at == "tensors":
        monkeypatch.setattr(safetensors.torch, "save_file", boom)
    elif fail_at == "meta":
        monkeypatch.setattr(state, "file_sha256", boom)
    else:
        monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(Killed):
        ck.save(_payload(6))
    monkeypatch.undo()
    _assert_same_payload(first, ck.load())  # the step-3 checkpoint, complete
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000003"]


def test_disk_full_is_said_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from mmmamba_bench.train.state import DiskFullError

    ck = TrainCheckpoint(tmp_path, "tag-a")
    ck.save(_payload(3))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFullError, match=r"disk full: .* needs about .* MiB, but only 0.0 MiB are free"):
        ck.save(_payload(6))
    monkeypatch.undo()
    assert ck.load()["step"] == 3 and len(list(tmp_path.iterdir())) == 1


# ---- the tiny teacher --------------------------------------------------------------------------------------------

def test_train_teacher_writes_a_loadable_teacher(tiny_teacher, tiny_data):
    import json

    from mmmamba_bench.checkpoint import load_model
    from mmmamba_bench.processor import Processor
    from mmmamba_bench.train.teacher import train_teacher

    model = load_model(tiny_teacher, ssd_backend="torch")
    assert model.config.kind == "transformer"
    proc = Processor.from_pretrained(tiny_teacher, max_tiles=1)
    assert model.config.llm_config.vocab_size == proc.tokenizer.vocab_size  # vocabulary from the tokenizer
    record = json.loads((tiny_teacher / "distill_state.json").read_text())
    assert set(record["validation_exact_match"]) == set(TINY_TASKS) | {"mean"}
    assert record["validation_loss"] > 0
    assert not tiny_teacher.with_name(tiny_teacher.name + ".work").exists()
    assert train_teacher(TINY_TEACHER, tiny_data, tiny_teacher, progress=False) == tiny_teacher  # finished: reused
    with pytest.raises(FileExistsError, match="another recipe"):
        train_teacher({**TINY_TEACHER, "seed": 1}, tiny_data, tiny_teacher, progress=False)


def test_train_teacher_max_steps_caps_and_records(tiny_data, tmp_path):
    import json

    from mmmamba_bench.train.teacher import train_teacher

    steps = []
    out = train_teacher(TINY_TEACHER, tiny_data, tmp_path / "t", progress=False, max_steps=2,
                        callback=lambda step, loss: steps.append(step))
    assert steps == [1, 2] and json.loads((out / "distill_state.json").read_text())["max_steps"] == 2
    with pytest.raises(FileExistsError, match="another recipe"):  # the uncapped recipe is another run
        train_teacher(TINY_TEACHER, tiny_data, out, progress=False)


def test_load_encoded_shares_one_images_tiles_and_equals_row_by_row_encoding(tiny_teacher, tiny_data):
    from mmmamba_bench.data.minisuite import iter_examples
    from mmmamba_bench.processor import Processor
    from mmmamba_bench.train.data import load_encoded

    proc = Processor.from_pretrained(tiny_teacher, max_tiles=1)
    items, names = load_encoded(proc, tiny_data, "train", ["mini_mme"])
    rows = [proc.encode_example(ex.question_prompt, ex.answer, ex.image.copy())  # a fresh image per row
            for ex in iter_examples(tiny_data, "train", ["mini_mme"])]
    assert len(items) == len(rows) > 2 and set(names) == {"mini_mme"}
    for got, want in zip(items, rows):
        assert got.input_ids == want.input_ids and got.labels == want.labels
        assert torch.equal(got.pixel_values, want.pixel_values)
    assert items[0].pixel_values is items[1].pixel_values  # an MME pair: one image, tiled once


# ---- teacher losses, augmentation, execution-independent hashes -----------------------------------------------

def test_text_targets_cover_prompt_text_only():
    from mmmamba_bench.processor import IGNORE, Batch
    from mmmamba_bench.train.teacher import text_targets

    V = 10  # ids >= V are special (image) tokens
    ids = torch.tensor([[0, 0, 5, 11, 11, 6, 7, 8, 2],   # 2 pads, text 5, image 11 11, text 6 7, answer 8, eos 2
                        [4, 5, 11, 6, 3, 7, 9, 8, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    labels = torch.full_like(ids, IGNORE)
    labels[:, 6], labels[:, 7] = ids[:, 7], ids[:, 8]  # the answer loss: predict 8 then eos from positions 6, 7
    got = text_targets(Batch(ids, mask, None, labels), V)
    I = IGNORE  # noqa: E741
    # row 0: positions 0-1 are padding (no target even where the next token is text), 2-3 precede image tokens,
    # 6-7 are the answer's (its own loss), 8 is last
    assert got[0].tolist() == [I, I, I, I, 6, 7, I, I, I]
    assert got[1].tolist() == [5, I, 6, 3, 7, 9, I, I, I]


def test_teacher_loss_adds_the_weighted_text_term(tiny_teacher, tiny_data):
    import torch.nn.functional as F

    from mmmamba_bench.checkpoint import load_model
    from mmmamba_bench.processor import IGNORE, Processor
    from mmmamba_bench.train.data import load_encoded
    from mmmamba_bench.train.teacher import answer_loss

    model = load_model(tiny_teacher, ssd_backend="torch", dtype=torch.float64)
    proc = Processor.from_pretrained(tiny_teacher, max_tiles=1)
    items, _ = load_encoded(proc, tiny_data, "train", TINY_TASKS)
    batch = proc.collate(items[:4])
    torch.set_grad_enabled(False)
    logits = model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask).logits
    # independent count: every real text token after a real position, outside the answer
    terms = []
    for b in range(4):
        for t in range(batch.input_ids.shape[1] - 1):
            nxt = int(batch.input_ids[b, t + 1])
            if (batch.attention_mask[b, t] and batch.attention_mask[b, t + 1] and nxt < logits.shape[-1]
                    and batch.labels[b, t] == IGNORE):
                terms.append(-torch.log_softmax(logits[b, t], -1)[nxt])
    assert len(terms) > 10
    text = torch.stack(terms).mean()
    ans = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE)
    rel = 1e-6  # answer_loss takes the cross-entropy in float32 (as for bf16 models); the reference is float64
    try:
        assert float(answer_loss(model, batch)) == pytest.approx(float(ans), rel=rel)
        assert float(answer_loss(model, batch, 0.5)) == pytest.approx(float(ans + 0.5 * text), rel=rel)
    finally:
        torch.set_grad_enabled(True)


def test_augment_off_is_identity_and_on_keeps_left_right():
    from mmmamba_bench.processor import Batch
    from mmmamba_bench.train.recipe import AugmentConfig
    from mmmamba_bench.train.teacher import augment_tiles, augmented

    x = torch.zeros(8, 3, 64, 64)
    x[..., :, 8:24] = 1.0  # a bright bar in the left half
    batch = Batch(torch.zeros(8, 4, dtype=torch.long), torch.ones(8, 4, dtype=torch.long), x, None)
    assert augmented(batch, AugmentConfig()) is batch
    aug = AugmentConfig(rotate_deg=12, scale=0.1, shear=0.15, translate_px=4)
    torch.manual_seed(0)
    y = augment_tiles(x, aug)
    torch.manual_seed(0)
    assert torch.equal(y, augment_tiles(x, aug))  # reproducible from the global generator (resumes repeat it)
    assert y.shape == x.shape and not torch.allclose(y, x)
    left, right = y[..., :32].mean(dim=(1, 2, 3)), y[..., 32:].mean(dim=(1, 2, 3))
    assert bool((left > 5 * right).all())  # the jitter never moves the bar to the other half
    assert float((y.mean(dim=(1, 2, 3)) - x.mean()).abs().max()) < 0.1  # a jitter, not a different picture
    with pytest.raises(RecipeError, match="augment"):
        from_dict(TeacherRecipe, {**TINY_TEACHER, "augment": {"scale": 1.5}}, "r").validate("r")


def test_recipe_hash_ignores_how_and_where_a_run_executes():
    from mmmamba_bench.train.recipe import recipe_hash

    base = from_dict(TeacherRecipe, TINY_TEACHER, "r")
    same = from_dict(TeacherRecipe, {**TINY_TEACHER, "device": "cuda", "threads": 8, "checkpoint_every": 50,
                                     "eval": {"items_per_task": 99}}, "r")
    other = from_dict(TeacherRecipe, {**TINY_TEACHER, "text_loss_weight": 0.5}, "r")
    assert recipe_hash(base) == recipe_hash(same)
    assert recipe_hash(base) != recipe_hash(other)


def test_other_data_is_refused_for_a_finished_or_interrupted_teacher(tiny_teacher, tiny_data, tmp_path):
    import shutil

    from mmmamba_bench.train.teacher import train_teacher
    from tests.tiny_suite import _write_manifest

    other = tmp_path / "other_data"
    shutil.copytree(tiny_data, other)
    import pyarrow.parquet as pq

    victim = next(other.glob("*_train.parquet"))
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, table.num_rows - 1), victim)  # one training row less: other data
    _write_manifest(other)
    with pytest.raises(FileExistsError, match="trained on other data"):
        train_teacher(TINY_TEACHER, other, tiny_teacher, progress=False)

    class Stop(Exception):
        pass

    def stop_at_4(step, loss):
        if step == 4:
            raise Stop

    out = tmp_path / "teacher"
    with pytest.raises(Stop):  # interrupted after the step-3 checkpoint
        train_teacher(TINY_TEACHER, tiny_data, out, progress=False, callback=stop_at_4)
    with pytest.raises(CorruptCheckpointError, match="recipe or data changed"):
        train_teacher(TINY_TEACHER, other, out, progress=False)


def test_a_second_run_on_the_same_output_is_refused(tiny_data, tmp_path):
    import subprocess
    import sys

    from mmmamba_bench.outputs import OutputLocked, output_lock
    from mmmamba_bench.train.distill import distill
    from tests.test_distill import TINY_DISTILL
    from mmmamba_bench.train.teacher import train_teacher

    out = tmp_path / "teacher"
    with output_lock(out, "test"):  # another run holds the output
        with pytest.raises(OutputLocked, match=r"being written by another run \(pid \d+, test\)"):
            train_teacher(TINY_TEACHER, tiny_data, out, progress=False)
        with pytest.raises(OutputLocked):
            distill(TINY_DISTILL, tmp_path / "no-teacher", out)
    # held by another process, released when it dies however it dies (flock): a rerun after a kill is not blocked
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmmamba_bench.outputs import output_lock\n"
                               "with output_lock(sys.argv[1], 'holder'):\n print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match="holder"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):
        pass


def test_unusable_outputs_are_named_before_any_work(tmp_path):
    import os

    from mmmamba_bench.outputs import OutputError, check_output_dir, check_output_file

    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    with pytest.raises(OutputError, match=r"--output .*results.json: is a file, but an output folder is needed"):
        check_output_dir(a_file)
    with pytest.raises(OutputError, match="results.json is a file in the way"):
        check_output_dir(a_file / "sub")
    with pytest.raises(OutputError, match=r"--out .*: is a folder, but an output file is needed"):
        check_output_file(tmp_path)
    locked = tmp_path / "ro"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: show it on a read-only place instead
            locked = Path("/proc/self")
        with pytest.raises(OutputError, match="not writable|cannot be created in"):
            check_output_dir(locked / "out", "--out")
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    # a usable place is checked, not created (a run refused later leaves nothing behind)
    assert check_output_dir(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    assert check_output_file(tmp_path / "new2" / "x.json") == tmp_path / "new2" / "x.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "ro"]
