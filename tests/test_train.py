"""Training building blocks: recipes, the WSD schedule, row freezing, resumable checkpoints, the tiny teacher."""

from __future__ import annotations

import pytest
import torch

from mmmamba_bench.train.loop import RowFreeze
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

def test_row_freeze_keeps_frozen_rows_bit_identical_under_adamw_decay():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    before = w.detach().clone()
    rows = torch.tensor([False, False, True, True, False, True])
    rf = RowFreeze(w, rows)
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        (w.sum() ** 2).backward()
        assert not w.grad[~rows].any()  # frozen rows get no gradient (nor a share of the clipping norm)
        opt.step()
        rf.restore()
    assert torch.equal(w.detach()[~rows], before[~rows])
    assert (w.detach()[rows] != before[rows]).all()


def test_corrupt_or_foreign_checkpoint_is_detected(tmp_path):
    ck = TrainCheckpoint(tmp_path, "tag-a")
    ck.save({"step": 3, "params": {"w": torch.ones(2)}})
    assert ck.load()["step"] == 3
    with pytest.raises(CorruptCheckpointError, match="another run"):
        TrainCheckpoint(tmp_path, "tag-b").load()
    data = ck.path.read_bytes()
    ck.path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        ck.load()
    ck.meta_path.unlink()
    with pytest.raises(CorruptCheckpointError, match="interrupted save"):
        ck.load()


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
