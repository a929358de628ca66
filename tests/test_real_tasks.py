"""The nine real benchmarks (tasks/real/paper_*.yaml): they mirror lmms-eval's built-in tasks except for the listed
overrides, the Table-1 map names them, the preflight names what is missing, and they load offline from a local
datasets cache (checked end to end on tiny stand-in datasets in the same cache layout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mmmamba_bench.benchmarks import TABLE1
from mmmamba_bench.data import real
from mmmamba_bench.eval.tasks import (
    GROUPS,
    JUDGE_TASKS,
    MINI_TASKS,
    PAPER_TASKS,
    TaskSetupError,
    check_tasks,
    include_paths,
    resolve_tasks,
)

REPO = Path(__file__).resolve().parents[1]  # the checkout these tests run from
REAL_DIR = REPO / "tasks" / "real"
MINI_DIR = REPO / "tasks" / "mini"
# keys that may differ from the built-in task without being listed as an override
ALWAYS_ALLOWED = {"task", "tag", "dataset_kwargs", "metadata", "include"}


def _lmms_utils():
    return pytest.importorskip("lmms_eval.utils", reason="lmms_eval is not installed")


def _load_simple(path: Path) -> dict:
    """A task YAML with includes merged and ``!function`` left unresolved (no lmms-eval hooks imported)."""
    return _lmms_utils().load_yaml_config(str(path), mode="simple")


def _canonical(value, builtin_dir: str | None):
    """Function references as full module paths; built-in relative ones resolved against their task folder."""
    if isinstance(value, yaml.Node):
        name = value.value
        if not name.startswith("lmms_eval."):
            name = f"lmms_eval.tasks.{builtin_dir}.{name}" if builtin_dir else f"local:{name}"
        return ("function", name)
    if isinstance(value, dict):
        return {k: _canonical(v, builtin_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v, builtin_dir) for v in value]
    return value


def _paper_yamls() -> dict[str, Path]:
    return {p.stem: p for p in sorted(REAL_DIR.glob("paper_*.yaml"))}


# ---------------------------------------------------------------------------------------------------------------------
# Names and task specs
# ---------------------------------------------------------------------------------------------------------------------


def test_include_paths_are_the_task_folders():
    assert include_paths() == [str(MINI_DIR), str(REAL_DIR)]


def test_resolve_tasks():
    assert resolve_tasks("mini") == list(MINI_TASKS)
    assert resolve_tasks("paper") == list(PAPER_TASKS) and len(PAPER_TASKS) == 11
    assert "paper_mmvet" not in resolve_tasks("paper_no_judge")
    assert resolve_tasks(" mini_mme, paper_pope ,mini_mme,") == [
        "mini_mme", "paper_pope_adv", "paper_pope_pop", "paper_pope_random"]
    with pytest.raises(TaskSetupError, match="mme: unknown task"):
        resolve_tasks("mini,mme")
    with pytest.raises(TaskSetupError, match="empty"):
        resolve_tasks(" , ")
    assert tuple(real.REAL_DATASETS) == PAPER_TASKS == GROUPS["paper"]  # one list, in the same order


def test_every_paper_task_has_a_yaml_and_the_yaml_names_match():
    yamls = _paper_yamls()
    assert sorted(yamls) == sorted(PAPER_TASKS)
    for name, path in yamls.items():
        assert _load_simple(path)["task"] == name


def test_table1_names_tasks_and_metrics_that_exist():
    metric_names = {}
    for folder in (REAL_DIR, MINI_DIR):
        for path in folder.glob("*.yaml"):
            config = _load_simple(path)
            metric_names[config["task"]] = {m["metric"] for m in config["metric_list"]}
    for column in TABLE1:
        for suite, headline in (("real", column.real), ("mini", column.mini)):
            if headline is None:
                continue
            for task in headline.tasks:
                assert task in metric_names, (column.name, suite, task)
                assert headline.metric in metric_names[task], (column.name, suite, task, headline.metric)
            assert (headline.reduce == "single") == (len(headline.tasks) == 1)
    assert {t for c in TABLE1 for t in c.real.tasks} == set(PAPER_TASKS)
    assert {t for c in TABLE1 if c.mini for t in c.mini.tasks} == set(MINI_TASKS)


# ---------------------------------------------------------------------------------------------------------------------
# The YAMLs mirror lmms-eval's built-in tasks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_paper_yaml_mirrors_its_builtin_task(name):
    ours = _load_simple(_paper_yamls()[name])
    meta = ours["metadata"]
    builtin_path = Path(_lmms_utils().__file__).parent / "tasks" / meta["builtin_yaml"]
    assert builtin_path.is_file(), builtin_path
    builtin = _load_simple(builtin_path)
    assert builtin["task"] == meta["builtin_task"]
    overrides = set(meta["overrides"])
    assert overrides <= set(ours) | set(builtin), overrides
    builtin_dir = meta["builtin_yaml"].split("/")[0]
    a, b = _canonical(ours, None), _canonical(builtin, builtin_dir)
    for key in sorted((set(a) | set(b)) - ALWAYS_ALLOWED - overrides):
        if key == "lmms_eval_specific_kwargs":  # we keep only the default prompt variant
            assert a[key]["default"] == b[key]["default"], (name, key)
        else:
            assert a.get(key) == b.get(key), (name, key)
    for key in overrides:  # a listed override really differs
        assert a.get(key) != b.get(key), (name, key)


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_paper_yaml_hooks_resolve(name, monkeypatch):
    if name in JUDGE_TASKS:  # lmms-eval's MM-Vet utils create the judge client on import (no request is made)
        monkeypatch.setenv("API_TYPE", "openai")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = _lmms_utils().load_yaml_config(str(_paper_yamls()[name]), mode="full")
    for key in ("doc_to_visual", "doc_to_text", "process_results", "process_docs"):
        if key in config:
            assert callable(config[key]), (name, key)
    for metric in config["metric_list"]:
        assert metric["aggregation"] == "mean" or callable(metric["aggregation"])


def test_mmvet_judge_without_a_score_is_an_error_not_a_zero(monkeypatch):
    monkeypatch.setenv("API_TYPE", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = _lmms_utils().load_yaml_config(str(_paper_yamls()["paper_mmvet"]), mode="full")
    import lmms_eval.tasks.mmvet.utils as builtin

    doc = {"question_id": "v1", "question": "What is 2+2?", "answer": "4", "capability": "math"}
    monkeypatch.setattr(builtin, "get_chat_response", lambda *a, **k: ("", ""))  # judge unreachable
    with pytest.raises(Exception, match="judge returned no score for question 'v1'"):
        config["process_results"](doc, ["4"])
    monkeypatch.setattr(builtin, "get_chat_response", lambda *a, **k: ("1.0", "gpt-judge"))
    assert config["process_results"](doc, ["4"])["gpt_eval_score"]["score"] == 1.0
    # an answer without a number (lmms-eval's own hook records 0.0 then) or out of range: an error naming it
    asked = []
    monkeypatch.setattr(builtin, "get_chat_response",
                        lambda *a, temperature=0.0, **k: (asked.append(temperature) or "Correct!", "gpt-judge"))
    with pytest.raises(Exception, match="no score in \\[0, 1\\] for question 'v1' in 4 tries; its last answer: 'Correct!'"):
        config["process_results"](doc, ["4"])
    assert asked == [0.0, 0.5, 1.0, 1.5]
    answers = iter(["1.5", "0.7 because it matches"])  # out of range, then a score: retried, then taken
    monkeypatch.setattr(builtin, "get_chat_response", lambda *a, **k: (next(answers), "gpt-judge"))
    assert config["process_results"](doc, ["4"])["gpt_eval_score"]["score"] == 0.7


def test_cache_folder_names_follow_datasets_naming():
    naming = pytest.importorskip("datasets.naming")
    for datasets_ in real.REAL_DATASETS.values():
        for ds in datasets_:
            namespace, name = ds.repo.split("/")
            assert ds.cache_folder == f"{namespace}___{naming.camelcase_to_snakecase(name)}"


# ---------------------------------------------------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------------------------------------------------


def _fake_cached(data_dir: Path, ds: real.HubDataset) -> None:
    """The marker the preflight looks for: a dataset_info.json listing the split, in datasets' cache layout."""
    folder = data_dir / ds.cache_folder / (ds.config or "default") / "0.0.0" / "abc123"
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "dataset_info.json"
    splits = json.loads(info.read_text())["splits"] if info.exists() else {}
    splits[ds.split] = {"name": ds.split}
    info.write_text(json.dumps({"splits": splits}))


def test_preflight_missing_data_directory(tmp_path):
    with pytest.raises(TaskSetupError) as err:
        check_tasks(["paper_mme", "paper_gqa"], tmp_path / "nowhere")
    assert "paper_mme, paper_gqa" in str(err.value) and "does not exist" in str(err.value)
    assert "python -m mmmamba_bench.data.real" in str(err.value)


def test_preflight_names_each_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    _fake_cached(tmp_path, real.REAL_DATASETS["paper_mme"][0])
    _fake_cached(tmp_path, real.REAL_DATASETS["paper_gqa"][0])  # questions, but no images
    check_tasks(["paper_mme"], tmp_path)
    with pytest.raises(TaskSetupError) as err:
        check_tasks(["paper_mme", "paper_gqa", "paper_pope_adv", "paper_mmvet"], tmp_path)
    problems = dict(err.value.problems)
    assert set(problems) == {"paper_gqa", "paper_pope_adv", "paper_mmvet"}
    assert "testdev_balanced_images" in problems["paper_gqa"]
    assert "lmms-lab-encoder/POPE (config Full), split adversarial" in problems["paper_pope_adv"]
    # a cached POPE with only the random split does not satisfy the adversarial task
    _fake_cached(tmp_path, real.REAL_DATASETS["paper_pope_random"][0])
    check_tasks(["paper_pope_random"], tmp_path)
    with pytest.raises(TaskSetupError, match="paper_pope_adv"):
        check_tasks(["paper_pope_adv"], tmp_path)


def test_preflight_judge_task_needs_credentials(tmp_path, monkeypatch):
    _fake_cached(tmp_path, real.REAL_DATASETS["paper_mmvet"][0])
    for var in ("OPENAI_API_KEY", "AZURE_API_KEY", "AZURE_ENDPOINT", "API_TYPE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TaskSetupError) as err:
        check_tasks(["paper_mmvet"], tmp_path)
    assert err.value.problems[0][0] == "paper_mmvet" and "OPENAI_API_KEY" in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", "  ")  # blank is not a key
    with pytest.raises(TaskSetupError, match="OPENAI_API_KEY"):
        check_tasks(["paper_mmvet"], tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    check_tasks(["paper_mmvet"], tmp_path)
    monkeypatch.setenv("API_TYPE", "azure")
    with pytest.raises(TaskSetupError, match="AZURE_API_KEY and AZURE_ENDPOINT"):
        check_tasks(["paper_mmvet"], tmp_path)
    monkeypatch.setenv("API_TYPE", "carrier-pigeon")
    with pytest.raises(TaskSetupError, match="carrier-pigeon"):
        check_tasks(["paper_mmvet"], tmp_path)


def test_preflight_rejects_unknown_tasks(tmp_path):
    with pytest.raises(TaskSetupError, match="mme: unknown task"):
        check_tasks(["mme"], tmp_path)


def test_default_data_dir_and_offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv(real.DATA_DIR_ENV, str(tmp_path))
    assert real.default_data_dir() == tmp_path
    monkeypatch.delenv(real.DATA_DIR_ENV)
    assert real.default_data_dir().parts[-2:] == ("mmmamba_bench", "datasets")
    env = real.offline_env(tmp_path)
    assert env == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LMMS_EVAL_DATASETS_CACHE": str(tmp_path)}


# ---------------------------------------------------------------------------------------------------------------------
# End to end: lmms-eval loads paper tasks offline from a datasets cache (tiny stand-in data, real cache layout)
# ---------------------------------------------------------------------------------------------------------------------


def _build_cached(cache: Path, scratch: Path, ds: real.HubDataset, rows: dict, features) -> None:
    """Write ``rows`` into ``cache`` exactly where ``datasets.load_dataset(ds.repo, ds.config)`` caches them."""
    datasets = pytest.importorskip("datasets")
    source = scratch / f"{ds.cache_folder}-{ds.config}-{ds.split}.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(source))
    build = scratch / "build"
    datasets.load_dataset("parquet", data_files={ds.split: str(source)}, cache_dir=str(build))
    (built,) = [p for p in build.glob("parquet/*/*/*") if p.is_dir()]
    dest = cache / ds.cache_folder / (ds.config or "default") / "0.0.0" / built.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), dest)
    shutil.rmtree(build)
    # what a hub download would have written: files and info named after the dataset and config
    dataset_name = ds.cache_folder.split("___")[1]
    for f in dest.glob("parquet-*.arrow"):
        f.rename(dest / f.name.replace("parquet-", f"{dataset_name}-", 1))
    info = json.loads((dest / "dataset_info.json").read_text())
    info.update(config_name=ds.config or "default", dataset_name=dataset_name)
    (dest / "dataset_info.json").write_text(json.dumps(info))


OFFLINE_SCRIPT = textwrap.dedent("""
    import json, sys
    from lmms_eval.tasks import TaskManager, get_task_dict
    manager = TaskManager(include_path=[sys.argv[1]], include_defaults=False)
    tasks = get_task_dict(["paper_mme", "paper_pope_adv", "paper_gqa"], manager)
    out = {}
    mme = tasks["paper_mme"]
    docs = mme.test_docs()
    results = [mme.process_results(d, [a]) for d, a in zip(docs, ["Yes", "Yes"])]
    out["mme"] = {"n": len(docs), "prompt": mme.doc_to_text(docs[0]),
                  "size": list(mme.config.doc_to_visual(docs[0])[0].size),
                  "score": mme.aggregation()["mme_perception_score"]([r["mme_perception_score"] for r in results])}
    pope = tasks["paper_pope_adv"]
    docs = pope.test_docs()
    results = [pope.process_results(d, [a]) for d, a in zip(docs, ["Yes, there is a cat.", "No."])]
    out["pope"] = {"n": len(docs), "prompt": pope.doc_to_text(docs[0]),
                   "f1": pope.aggregation()["pope_f1_score"]([r["pope_f1_score"] for r in results])}
    gqa = tasks["paper_gqa"]
    docs = gqa.test_docs()
    out["gqa"] = {"n": len(docs), "prompt": gqa.doc_to_text(docs[1]),
                  "pixel": list(gqa.config.doc_to_visual(docs[1])[0].getpixel((0, 0))),
                  "scores": [gqa.process_results(d, [a])["exact_match"] for d, a in zip(docs, ["Left.", "red"])]}
    print("RESULT " + json.dumps(out))
""")


def test_paper_tasks_load_offline_from_the_local_cache(tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("lmms_eval.tasks", reason="lmms_eval is not installed")
    from PIL import Image

    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    scratch.mkdir()
    image = datasets.Image()
    text = datasets.Value("string")
    red, blue = Image.new("RGB", (24, 24), (255, 0, 0)), Image.new("RGB", (24, 24), (0, 0, 255))
    _build_cached(cache, scratch, real.REAL_DATASETS["paper_mme"][0], {
        "question_id": ["a.png", "a.png"], "image": [red, red], "category": ["color", "color"],
        "question": ["Is it red? Please answer yes or no.", "Is it blue? Please answer yes or no."],
        "answer": ["Yes", "No"],
    }, datasets.Features({"question_id": text, "image": image, "category": text, "question": text, "answer": text}))
    _build_cached(cache, scratch, real.REAL_DATASETS["paper_pope_adv"][0], {
        "question_id": ["1", "2"], "image": [red, red], "question": ["Is there a cat in the image?"] * 2,
        "answer": ["yes", "no"],
    }, datasets.Features({"question_id": text, "image": image, "question": text, "answer": text}))
    questions, images = real.REAL_DATASETS["paper_gqa"]
    _build_cached(cache, scratch, questions, {
        "id": ["q1", "q2"], "imageId": ["n1", "n2"], "question": ["Which side is the cat on?", "What color is it?"],
        "answer": ["left", "blue"],
    }, datasets.Features({"id": text, "imageId": text, "question": text, "answer": text}))
    _build_cached(cache, scratch, images, {"id": ["n1", "n2"], "image": [red, blue]},
                  datasets.Features({"id": text, "image": image}))
    check_tasks(["paper_mme", "paper_pope_adv", "paper_gqa"], cache)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LMMS_EVAL_"))}
    env.update(real.offline_env(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(REAL_DIR)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["mme"] == {"n": 2, "prompt": "Is it red?\nAnswer the question using a single word or phrase.",
                          "size": [24, 24], "score": 50.0}  # one pair half right: acc 50 + acc+ 0
    # POPE's answer rule maps "Yes, there is a cat." to yes (the built-in scoring alone would count it wrong)
    assert out["pope"] == {"n": 2, "prompt": "Is there a cat in the image?\nAnswer the question using a single "
                                             "word or phrase.", "f1": 1.0}
    assert out["gqa"] == {"n": 2, "prompt": "What color is it?\nAnswer the question using a single word or phrase.",
                          "pixel": [0, 0, 255], "scores": [1.0, 0.0]}


def test_cluster_limit_takes_whole_clusters():
    from mmmamba_bench.eval.tasks import cluster_limit

    assert cluster_limit(["mini_sqa"], 5) == 5
    assert cluster_limit(["mini_mme"], 5) == 6  # whole image pairs
    assert cluster_limit(["mini_mme", "mini_mmbench"], 5) == 8  # pairs and circular groups of 4
    assert cluster_limit(["mini_pope", "mini_mmbench", "mini_gqa"], 4) == 12  # all three POPE splits of an image
    assert cluster_limit(MINI_TASKS, 13) == 24
    assert cluster_limit(["paper_mme"], 3) == 4
    assert cluster_limit(["mini_mme"], None) is None
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="--limit must be a positive integer"):
            cluster_limit(["mini_mme"], bad)


def test_data_identity_names_the_cache_folders_and_hashes(tmp_path):
    import hashlib

    from mmmamba_bench.eval.tasks import data_identity

    _fake_cached(tmp_path, real.REAL_DATASETS["paper_gqa"][0])
    identity = data_identity(["paper_gqa"], tmp_path)
    assert set(identity) == {"real"} and identity["real"]["dir"] == str(tmp_path.resolve())
    questions, images = identity["real"]["tasks"]["paper_gqa"]
    info = tmp_path / "lmms-lab-encoder___gqa" / "testdev_balanced_instructions" / "0.0.0" / "abc123"
    assert questions == {"dataset": "lmms-lab-encoder/GQA", "config": "testdev_balanced_instructions",
                         "split": "testdev", "folder": str(info.relative_to(tmp_path)),
                         "dataset_info_sha256": hashlib.sha256((info / "dataset_info.json").read_bytes()).hexdigest()}
    assert images["config"] == "testdev_balanced_images" and images["folder"] is None  # not cached: said, not hidden
    (info / "dataset_info.json").write_text((info / "dataset_info.json").read_text() + " ")
    assert data_identity(["paper_gqa"], tmp_path)["real"]["tasks"]["paper_gqa"][0]["dataset_info_sha256"] != \
        questions["dataset_info_sha256"]  # other local data, another identity


def test_preflight_checks_the_columns_a_task_reads_and_their_types(tmp_path):
    """A missing column (found by lmms-eval only after the whole inference) or an integer answer (a crash inside the
    tokenizer) is named with its task, column and types before any model loads."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    scratch.mkdir()
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    text, image = datasets.Value("string"), datasets.Image()
    _build_cached(cache, scratch, real.REAL_DATASETS["paper_mme"][0], {  # no category; answer an integer
        "question_id": ["a.png"], "image": [red], "question": ["Is it red?"], "answer": [1],
    }, datasets.Features({"question_id": text, "image": image, "question": text, "answer": datasets.Value("int64")}))
    _build_cached(cache, scratch, real.REAL_DATASETS["paper_scienceqa_img"][0], {  # answer an int, as it should be
        "hint": [""], "question": ["Which?"], "choices": [["a", "b"]], "answer": [1], "image": [red],
    }, datasets.Features({"hint": text, "question": text, "choices": datasets.Sequence(text),
                          "answer": datasets.Value("int64"), "image": image}))
    check_tasks(["paper_scienceqa_img"], cache)
    with pytest.raises(TaskSetupError) as err:
        check_tasks(["paper_mme", "paper_scienceqa_img"], cache)
    problems = err.value.problems
    assert [task for task, _ in problems] == ["paper_mme", "paper_mme"]
    assert "column 'answer' has type int64, expected string" in problems[0][1]
    assert "column 'category' (expected type string) is missing" in problems[1][1]


def test_preflight_checks_mini_suite_column_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmmamba_bench.data import minisuite

    rows = [{"task": "mini_mme", "split": "test", "row": 0, "id": "m-0", "group": "g0", "category": "color",
             "image": b"", "question": "Is it red?", "options": [], "hint": "", "answer": 1, "answers": ["yes"],
             "rotation": 0}]
    fields = [pa.field("answer", pa.int64()) if f.name == "answer" else f for f in minisuite.SCHEMA]
    path = tmp_path / minisuite.file_name("mini_mme", "test")
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)
    (tmp_path / minisuite.MANIFEST).write_text(json.dumps({"files": {path.name: {
        "sha256": minisuite.sha256_file(path)}}}))
    with pytest.raises(TaskSetupError) as err:
        check_tasks(["mini_mme"], mini_data_dir=tmp_path)
    assert err.value.problems == [("mini_mme", f"{path}: column 'answer' has type int64, expected string; run "
                                               f"`mmmamba-bench data --out {tmp_path}` to generate it")]
