"""The offline mini-suite: deterministic generation, split sizes and separation, loading through lmms-eval, and
clear errors for corrupt / empty / malformed data."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmmamba_bench.data import minisuite
from mmmamba_bench.data.minisuite import SIZES, SPLITS, TASKS, MiniSuiteDataError, file_name
from mmmamba_bench.data.prompts import format_prompt
from mmmamba_bench.data.sources import split_digits
from mmmamba_bench.eval.tasks import MINI_TASKS, TaskSetupError, check_tasks

ROWS_PER_ITEM = {"mini_mme": 2, "mini_pope": 12, "mini_mmbench": 4}
REPO = Path(__file__).resolve().parents[1]  # the checkout these tests run from
MINI_TASK_DIR = REPO / "tasks" / "mini"


@pytest.fixture(scope="module")
def suite(mini_suite) -> tuple[Path, dict]:
    return mini_suite


def _tables(data_dir: Path, split: str) -> dict[str, pa.Table]:
    return {task: pq.read_table(data_dir / file_name(task, split)) for task in TASKS}


def test_generation_is_byte_identical(suite, tmp_path):
    first, manifest = suite
    minisuite.generate(tmp_path, seed=0)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == len(TASKS) * len(SPLITS) + 1  # + manifest.json
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((first / name).read_bytes()).hexdigest() == entry["sha256"]


def test_split_sizes_and_test_items(suite):
    data_dir, manifest = suite
    assert set(MINI_TASKS) == set(TASKS)
    for split_index, split in enumerate(SPLITS):
        for task, table in _tables(data_dir, split).items():
            expected = SIZES[task][split_index] * ROWS_PER_ITEM.get(task, 1)
            assert table.num_rows == expected == manifest["rows"][task][split], (task, split)
            assert set(table.column("split").to_pylist()) == {split}
    assert manifest["test_rows"] == 1260 >= 500
    assert manifest["test_images"] == sum(s[2] for s in SIZES.values()) == 710


def test_no_image_shared_between_or_within_splits(suite):
    """Every PNG is unique in the whole suite (rows of one MME pair / POPE image / MMBench question share one)."""
    data_dir, _ = suite
    seen: dict[str, tuple[str, str]] = {}
    for split in SPLITS:
        for task, table in _tables(data_dir, split).items():
            groups = {}
            for group, image in zip(table.column("group").to_pylist(), table.column("image").to_pylist()):
                digest = hashlib.sha256(image).hexdigest()
                assert groups.setdefault(group, digest) == digest, f"{task} {split} {group}: rows differ in image"
            for group, digest in groups.items():
                assert digest not in seen, f"{task} {split} {group} repeats the image of {seen[digest]}"
                seen[digest] = (task, split)


def test_digit_instances_are_disjoint_between_splits():
    pools = split_digits(seed=0)
    sets = {s: set(pools[s].indices.tolist()) for s in SPLITS}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["validation"]
    assert not sets["validation"] & sets["test"]
    assert sum(len(s) for s in sets.values()) == 1797


def test_answers_are_balanced(suite):
    """No answer is frequent enough for a blind guess to look good (so 'above chance' means something)."""
    data_dir, _ = suite
    for split in ("train", "test"):
        tables = _tables(data_dir, split)
        for task in ("mini_mme", "mini_pope"):
            answers = Counter(a.lower() for a in tables[task].column("answer").to_pylist())
            assert answers["yes"] == answers["no"], (task, split)
        pope = tables["mini_pope"].to_pylist()
        for sampling in ("random", "popular", "adversarial"):
            rows = [r for r in pope if r["category"] == sampling]
            assert sum(r["answer"] == "yes" for r in rows) * 2 == len(rows)
        # (ScienceQA-style questions have 2-4 options, so A/B are the common letters there)
        for task, limit in (("mini_mmbench", 0.35), ("mini_seed", 0.35), ("mini_sqa", 0.5),
                            ("mini_textvqa", 0.2), ("mini_gqa", 0.2)):
            answers = Counter(tables[task].column("answer").to_pylist())
            share = answers.most_common(1)[0][1] / sum(answers.values())
            assert share < limit, (task, split, answers.most_common(3))


def test_textvqa_has_ten_references_with_variants(suite):
    data_dir, _ = suite
    rows = pq.read_table(data_dir / file_name("mini_textvqa", "test")).to_pylist()
    assert all(len(r["answers"]) == 10 and r["answers"].count(r["answer"]) >= 5 for r in rows)
    assert sum(len(set(r["answers"])) > 1 for r in rows) > len(rows) // 2


def test_iter_examples(suite):
    data_dir, _ = suite
    examples = list(minisuite.iter_examples(data_dir, "validation", tasks=["mini_sqa", "mini_mmbench"]))
    assert len(examples) == SIZES["mini_sqa"][1] + 4 * SIZES["mini_mmbench"][1]
    ex = examples[0]
    assert ex.task == "mini_sqa" and ex.image.size == (64, 64) and ex.image.mode == "RGB"
    assert ex.question_prompt.endswith("\nAnswer with the option's letter from the given choices directly.")
    assert ex.answer in "ABCD"
    with pytest.raises(ValueError, match="split"):
        next(minisuite.iter_examples(data_dir, "dev"))
    with pytest.raises(ValueError, match="unknown mini task"):
        next(minisuite.iter_examples(data_dir, "train", tasks=["mme"]))


def test_prompt_formats_are_the_reference_prompts():
    assert format_prompt("yes_no", "Is there a cat in the image?") == \
        "Is there a cat in the image? Please answer yes or no."
    assert format_prompt("short", "What color is the digit?") == \
        "What color is the digit?\nAnswer the question using a single word or phrase."
    assert format_prompt("choice", "Which number is greater?", ["left", "right"], hint="Numbers.") == (
        "Context: Numbers.\nWhich number is greater?\nA. left\nB. right\n"
        "Answer with the option's letter from the given choices directly.")


# ---------------------------------------------------------------------------------------------------------------------
# Errors: corrupt image, empty file, missing column
# ---------------------------------------------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, edit) -> None:
    pq.write_table(edit(pq.read_table(src)), dst)


def test_corrupt_image_names_file_and_row(suite, tmp_path):
    data_dir, _ = suite
    path = tmp_path / file_name("mini_gqa", "train")

    def corrupt(table):
        images = table.column("image").to_pylist()
        images[3] = b"not a png"
        return table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))

    _rewrite(data_dir / path.name, path, corrupt)
    with pytest.raises(MiniSuiteDataError, match=rf"{path.name} row 3 .*cannot be decoded"):
        list(minisuite.iter_examples(tmp_path, "train", tasks=["mini_gqa"]))


def test_missing_image_names_task_split_and_row():
    doc = {"task": "mini_seed", "split": "test", "row": 17, "id": "mini_seed-test-00017", "image": None}
    with pytest.raises(MiniSuiteDataError, match="mini_seed test row 17.*missing"):
        minisuite.decode_image(doc["image"], f"{doc['task']} {doc['split']} row {doc['row']}")


def test_empty_and_malformed_files_are_errors(suite, tmp_path):
    data_dir, _ = suite
    src = data_dir / file_name("mini_mme", "train")
    empty = tmp_path / "empty" / file_name("mini_mme", "train")
    empty.parent.mkdir()
    _rewrite(src, empty, lambda t: t.slice(0, 0))
    with pytest.raises(MiniSuiteDataError, match=rf"{empty}: no rows"):
        minisuite.read_table(empty)
    dropped = tmp_path / "dropped" / file_name("mini_mme", "train")
    dropped.parent.mkdir()
    _rewrite(src, dropped, lambda t: t.drop_columns(["answer"]))
    with pytest.raises(MiniSuiteDataError, match=rf"{dropped}: missing column\(s\) \['answer'\]"):
        list(minisuite.iter_examples(dropped.parent, "train", tasks=["mini_mme"]))
    garbage = tmp_path / "garbage" / file_name("mini_mme", "train")
    garbage.parent.mkdir()
    garbage.write_bytes(b"PAR1 not really")
    with pytest.raises(MiniSuiteDataError, match="not a readable parquet"):
        minisuite.read_table(garbage)
    with pytest.raises(MiniSuiteDataError, match="file not found"):
        minisuite.read_table(tmp_path / "nowhere.parquet")


def test_preflight_on_generated_and_broken_data(suite, tmp_path):
    data_dir, _ = suite
    check_tasks(MINI_TASKS, mini_data_dir=data_dir)  # all fine
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    (broken / file_name("mini_pope", "test")).unlink()
    with (broken / file_name("mini_gqa", "test")).open("ab") as f:
        f.write(b"x")
    with pytest.raises(TaskSetupError) as err:
        check_tasks(MINI_TASKS, mini_data_dir=broken)
    assert {task for task, _ in err.value.problems} == {"mini_pope", "mini_gqa"}
    message = str(err.value)
    assert "mini_pope_test.parquet not found" in message and "sha256" in message
    assert f"mmmamba-bench data --out {broken}" in message


# ---------------------------------------------------------------------------------------------------------------------
# Through lmms-eval's TaskManager
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_dir(suite, tmp_path_factory) -> Path:
    """A copy of tasks/mini (YAMLs + hooks) with the freshly generated data next to it, as in the repo."""
    data_dir, _ = suite
    root = tmp_path_factory.mktemp("tasks") / "mini"
    shutil.copytree(MINI_TASK_DIR, root, ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copytree(data_dir, root / "data")
    return root


def _task_dict(task_dir: Path, names):
    lmms_tasks = pytest.importorskip("lmms_eval.tasks", reason="lmms_eval is not installed")
    manager = lmms_tasks.TaskManager(include_path=[str(task_dir)], include_defaults=False)
    return lmms_tasks.get_task_dict(list(names), manager)


def _aggregate(task, docs, outputs) -> dict[str, float]:
    results = [task.process_results(doc, [out]) for doc, out in zip(docs, outputs)]
    return {m["metric"]: task.aggregation()[m["metric"]]([r[m["metric"]] for r in results])
            for m in task.config.metric_list}


def test_lmms_eval_loads_every_mini_task(suite, task_dir):
    data_dir, manifest = suite
    tasks = _task_dict(task_dir, MINI_TASKS)
    assert sorted(tasks) == sorted(MINI_TASKS)
    for name, task in tasks.items():
        docs = task.test_docs()
        assert len(docs) == manifest["rows"][name]["test"]
        examples = list(minisuite.iter_examples(data_dir, "test", tasks=[name]))
        for i in (0, len(docs) - 1):
            assert task.doc_to_text(docs[i]) == examples[i].question_prompt
            (image,) = task.doc_to_visual(docs[i])
            assert image.tobytes() == examples[i].image.tobytes()
            assert task.doc_to_target(docs[i]) == examples[i].answer
        perfect = _aggregate(task, docs, [d["answer"] for d in docs])
        headline = {"mini_mme": 1000.0, "mini_pope": 1.0}.get(name, 1.0)
        assert list(perfect.values())[0] == pytest.approx(headline), (name, perfect)


def test_lmms_eval_scores_hand_made_outputs(task_dir):
    tasks = _task_dict(task_dir, ["mini_mme", "mini_pope", "mini_mmbench"])
    # MME: answer every question "Yes" -> each pair half right -> acc 50, acc+ 0 -> 50 per category, 5 categories
    mme = tasks["mini_mme"]
    assert _aggregate(mme, mme.test_docs(), ["Yes"] * 300)["mme_score"] == pytest.approx(250.0)
    # POPE: always "yes" -> precision .5, recall 1 -> F1 2/3 in every split; yes ratio 1
    pope = tasks["mini_pope"]
    got = _aggregate(pope, pope.test_docs(), ["Yes."] * 240)
    assert got["f1_mean"] == pytest.approx(2 / 3) and got["yes_ratio"] == 1.0 and got["accuracy"] == 0.5
    # MMBench: right on every rotation except rotation 1 of the first question
    mmb = tasks["mini_mmbench"]
    docs = mmb.test_docs()
    first = docs[0]["group"]
    outputs = [("Z" if d["group"] == first and d["rotation"] == 1 else d["answer"]) for d in docs]
    got = _aggregate(mmb, docs, outputs)
    assert got["circular_accuracy"] == pytest.approx(59 / 60) and got["accuracy"] == pytest.approx(239 / 240)


def test_lmms_eval_load_fails_clearly_on_malformed_data(task_dir, tmp_path, monkeypatch):
    tenacity = pytest.importorskip("tenacity")
    task_module = pytest.importorskip("lmms_eval.api.task", reason="lmms_eval is not installed")
    # lmms-eval retries a failing dataset load 5 times, 2 s apart, then raises tenacity.RetryError from our error
    monkeypatch.setattr(task_module.ConfigurableTask.download.retry, "wait", tenacity.wait_none())
    broken = tmp_path / "mini"
    shutil.copytree(task_dir, broken, ignore=shutil.ignore_patterns("__pycache__"))
    path = broken / "data" / file_name("mini_gqa", "test")
    _rewrite(path, path, lambda t: t.drop_columns(["answers"]))
    with pytest.raises((MiniSuiteDataError, tenacity.RetryError)) as err:
        _task_dict(broken, ["mini_gqa"])
    cause = err.value.last_attempt.exception() if isinstance(err.value, tenacity.RetryError) else err.value
    assert isinstance(cause, MiniSuiteDataError)
    assert "mini_gqa split 'test'" in str(cause) and "mini_gqa_test.parquet" in str(cause)
    assert "missing column(s) ['answers']" in str(cause)


# ---- the embedded demo teacher (models/demo-teacher) against freshly generated data --------------------------------

def test_embedded_teacher_was_trained_on_this_data_with_the_committed_recipe(suite):
    import json

    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.train.recipe import TeacherRecipe, as_recipe, recipe_hash

    out, _ = suite
    teacher = resolve_model("demo-teacher")
    assert teacher == REPO / "models" / "demo-teacher"
    record = json.loads((teacher / "distill_state.json").read_text())
    assert record["recipe_sha256"] == recipe_hash(as_recipe(REPO / "distill" / "teacher-demo.yaml",
                                                            TeacherRecipe))
    assert record["data_manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()


def test_embedded_teacher_is_well_above_chance_on_every_task(suite):
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.checkpoint import load_model
    from mmmamba_bench.processor import Processor
    from mmmamba_bench.train.quickeval import CHANCE, validation_accuracy

    out, _ = suite
    teacher = resolve_model("demo-teacher")
    model = load_model(teacher, ssd_backend="torch")
    scores = validation_accuracy(model, Processor.from_pretrained(teacher, max_tiles=1), out, items_per_task=40)
    # greedy exact match on the validation split (the test split is for lmms-eval only); chance: yes/no 0.5,
    # 4 options 0.25, ScienceQA ~0.42, open answers ~0. Recorded at training time: mme .825 pope .95 mmbench .70
    # seed .85 sqa .80 textvqa .275 gqa .90.
    margin = {"mini_textvqa": 0.15}
    for task in TASKS:
        assert scores[task] >= CHANCE[task] + margin.get(task, 0.25), (task, scores)
