"""lmms-eval hooks of the offline mini-suite tasks (tasks/mini/*.yaml).

Thin glue: prompts come from ``mmmamba_bench.data.prompts`` (the same text the trainers use), images are decoded by
``mmmamba_bench.data.minisuite.decode_image`` (errors name task, split and row), and all metric math lives in
``mmmamba_bench.eval.metrics`` (pure Python, unit-tested).
"""

from __future__ import annotations

from functools import partial

from mmmamba_bench.data import minisuite
from mmmamba_bench.eval import metrics


def _where(doc: dict) -> str:
    return f"{doc.get('task', '?')} {doc.get('split', '?')} row {doc.get('row', '?')} (id {doc.get('id', '?')})"


# -- documents --------------------------------------------------------------------------------------------------------


def process_docs(dataset, task: str):
    """Check a loaded split before use: every column present, at least one row, rows of the right task."""
    split = str(getattr(dataset, "split", None) or "test")
    where = f"{task} split {split!r} ({minisuite.file_name(task, split)})"
    minisuite.check_columns(dataset.column_names, dataset.num_rows, where)
    tasks = set(dataset.unique("task"))
    if tasks != {task}:
        raise minisuite.MiniSuiteDataError(f"{where}: rows belong to task(s) {sorted(tasks)}, expected {task!r}")
    return dataset


process_docs_mini_mme = partial(process_docs, task="mini_mme")
process_docs_mini_pope = partial(process_docs, task="mini_pope")
process_docs_mini_mmbench = partial(process_docs, task="mini_mmbench")
process_docs_mini_seed = partial(process_docs, task="mini_seed")
process_docs_mini_sqa = partial(process_docs, task="mini_sqa")
process_docs_mini_textvqa = partial(process_docs, task="mini_textvqa")
process_docs_mini_gqa = partial(process_docs, task="mini_gqa")


def doc_to_visual(doc: dict) -> list:
    return [minisuite.decode_image(doc.get("image"), _where(doc))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return minisuite.row_prompt(doc)


# -- per-answer results -----------------------------------------------------------------------------------------------


def _prediction(results: list) -> str:
    if len(results) != 1:
        raise ValueError(f"expected one model output per document, got {len(results)}")
    return str(results[0])


def process_results_mme(doc: dict, results: list) -> dict:
    correct = metrics.parse_yes_no(_prediction(results)) == doc["answer"].lower()
    record = {"category": doc["category"], "image_id": doc["group"], "correct": correct}
    return {"mme_score": record, "accuracy": float(correct)}


def process_results_pope(doc: dict, results: list) -> dict:
    record = {"split": doc["category"], "truth": doc["answer"].lower(),
              "prediction": metrics.parse_yes_no(_prediction(results))}
    return {name: record for name in ("f1_mean", "accuracy", "yes_ratio", "f1_random", "f1_popular",
                                      "f1_adversarial")}


def _choice_correct(doc: dict, results: list) -> bool:
    return metrics.parse_choice(_prediction(results), len(doc["options"])) == doc["answer"]


def process_results_mmbench(doc: dict, results: list) -> dict:
    correct = _choice_correct(doc, results)
    record = {"question_id": doc["group"], "rotation": int(doc["rotation"]), "correct": correct}
    return {"circular_accuracy": record, "accuracy": float(correct)}


def process_results_choice(doc: dict, results: list) -> dict:
    return {"accuracy": float(_choice_correct(doc, results))}


def process_results_textvqa(doc: dict, results: list) -> dict:
    return {"vqa_accuracy": metrics.vqa_soft_accuracy(_prediction(results), doc["answers"])}


def process_results_gqa(doc: dict, results: list) -> dict:
    return {"exact_match": metrics.exact_match(_prediction(results), doc["answer"])}


# -- aggregation ------------------------------------------------------------------------------------------------------


def aggregate_mme_score(records: list[dict]) -> float:
    return metrics.mme_total(metrics.MMERecord(**r) for r in records)


def aggregate_circular_accuracy(records: list[dict]) -> float:
    return metrics.circular_accuracy(metrics.CircularRecord(**r) for r in records)


def _pope(records: list[dict], key: str) -> float:
    return metrics.pope_metrics(metrics.PopeRecord(**r) for r in records)[key]


aggregate_pope_f1_mean = partial(_pope, key="f1_mean")
aggregate_pope_accuracy = partial(_pope, key="accuracy")
aggregate_pope_yes_ratio = partial(_pope, key="yes_ratio")
aggregate_pope_f1_random = partial(_pope, key="f1_random")
aggregate_pope_f1_popular = partial(_pope, key="f1_popular")
aggregate_pope_f1_adversarial = partial(_pope, key="f1_adversarial")
