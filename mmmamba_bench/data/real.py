"""Local copies of the nine real benchmarks: which Hugging Face datasets each ``paper_*`` task reads, where they sit
in the local data directory, and a one-time fetch for a machine with network.

The data directory is a Hugging Face ``datasets`` cache (what ``datasets.load_dataset(..., cache_dir=DIR)``
writes). The eval wrapper hands it to lmms-eval as ``LMMS_EVAL_DATASETS_CACHE`` with ``HF_HUB_OFFLINE=1`` and
``HF_DATASETS_OFFLINE=1``; ``datasets`` then loads each hub id from this cache without network. See tasks/README.md.

Fetch once (network needed; public datasets, several GB for SEED-Bench and MMMU)::

    python -m mmmamba_bench.data.real --data-dir /path/to/data paper
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DATA_DIR_ENV = "MMMAMBA_BENCH_DATA"


@dataclass(frozen=True)
class HubDataset:
    """One dataset (config) a task loads, and the split it must contain."""

    repo: str  # hub id, as in the task YAML's dataset_path
    config: str | None  # dataset_name in the YAML; None = the default config
    split: str
    cache_folder: str  # the folder datasets gives this repo in a cache_dir ("<namespace>___<snake_case name>")

    def describe(self) -> str:
        return f"{self.repo}" + (f" (config {self.config})" if self.config else "") + f", split {self.split}"


# paper task -> the datasets it needs (the GQA images are read by tasks/real/gqa_utils.py)
REAL_DATASETS: dict[str, tuple[HubDataset, ...]] = {
    "paper_mme": (HubDataset("lmms-lab-encoder/MME", None, "test", "lmms-lab-encoder___mme"),),
    "paper_mmbench_en_dev": (HubDataset("lmms-lab-encoder/MMBench", "en", "dev", "lmms-lab-encoder___mm_bench"),),
    "paper_pope_adv": (HubDataset("lmms-lab-encoder/POPE", "Full", "adversarial", "lmms-lab-encoder___pope"),),
    "paper_pope_pop": (HubDataset("lmms-lab-encoder/POPE", "Full", "popular", "lmms-lab-encoder___pope"),),
    "paper_pope_random": (HubDataset("lmms-lab-encoder/POPE", "Full", "random", "lmms-lab-encoder___pope"),),
    "paper_seedbench": (HubDataset("lmms-lab-encoder/SEED-Bench", None, "test", "lmms-lab-encoder___seed-bench"),),
    "paper_mmmu_val": (HubDataset("lmms-lab-encoder/MMMU", None, "validation", "lmms-lab-encoder___mmmu"),),
    "paper_mmvet": (HubDataset("lmms-lab-encoder/MMVet", None, "test", "lmms-lab-encoder___mm_vet"),),
    "paper_textvqa_val": (HubDataset("lmms-lab-encoder/textvqa", None, "validation", "lmms-lab-encoder___textvqa"),),
    "paper_scienceqa_img": (HubDataset("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test",
                                       "lmms-lab-encoder___science_qa"),),
    "paper_gqa": (
        HubDataset("lmms-lab-encoder/GQA", "testdev_balanced_instructions", "testdev", "lmms-lab-encoder___gqa"),
        HubDataset("lmms-lab-encoder/GQA", "testdev_balanced_images", "testdev", "lmms-lab-encoder___gqa"),
    ),
}


# The columns each paper task's lmms-eval hooks read (doc_to_visual / doc_to_text / doc_to_target / process_results),
# per dataset of REAL_DATASETS[task] in the same order, with the type they must have: "string", "int", "image",
# "list of string", "list of image", or None (read, any type: ids). Checked against the cached dataset_info.json
# before any model loads (:func:`column_problems`): without it, a missing column surfaced only after the whole
# inference (in process_results) and an integer answer crashed inside the tokenizer.
_POPE_COLUMNS = {"question_id": None, "question": "string", "answer": "string", "image": "image"}
TASK_COLUMNS: dict[str, tuple[dict[str, str | None], ...]] = {
    "paper_mme": ({"question_id": None, "question": "string", "answer": "string", "category": "string",
                   "image": "image"},),
    "paper_mmbench_en_dev": ({"index": None, "question": "string", "hint": None, "answer": "string",
                              "category": "string", "L2-category": "string", "source": None, "split": None,
                              "image": "image"},),
    "paper_pope_adv": (_POPE_COLUMNS,),
    "paper_pope_pop": (_POPE_COLUMNS,),
    "paper_pope_random": (_POPE_COLUMNS,),
    "paper_seedbench": ({"question_id": None, "question": "string", "choice_a": "string", "choice_b": "string",
                         "choice_c": "string", "choice_d": "string", "answer": "string", "data_type": "string",
                         "image": "list of image"},),
    "paper_mmmu_val": ({"id": "string", "question": "string", "options": "string", "answer": "string",
                        "question_type": "string", **{f"image_{k}": "image" for k in range(1, 8)}},),
    "paper_mmvet": ({"question_id": None, "question": "string", "answer": "string", "capability": None,
                     "image": "image"},),
    "paper_textvqa_val": ({"question_id": None, "question": "string", "answers": "list of string",
                           "image": "image"},),
    "paper_scienceqa_img": ({"hint": "string", "question": "string", "choices": "list of string", "answer": "int",
                             "image": "image"},),
    "paper_gqa": ({"id": None, "imageId": "string", "question": "string", "answer": "string"},
                  {"id": "string", "image": "image"}),
}


def feature_type(feature) -> str:
    """A column's type as ``dataset_info.json`` stores it, in words: "string", "int64", "image", "list of string"."""
    if isinstance(feature, list):  # datasets 2.x writes a list column as [inner feature]
        return "list of " + feature_type(feature[0]) if feature else "list"
    if not isinstance(feature, dict):
        return type(feature).__name__
    kind = feature.get("_type")
    if kind == "Value":
        dtype = str(feature.get("dtype"))
        return "string" if dtype in ("string", "large_string") else dtype
    if kind == "Image":
        return "image"
    if kind in ("Sequence", "List", "LargeList"):
        return "list of " + feature_type(feature.get("feature"))
    return str(kind or "a nested structure")


def _type_matches(expected: str, actual: str) -> bool:
    if expected == "int":
        return actual.startswith(("int", "uint"))
    return actual == expected


def column_problems(task: str, data_dir: Path) -> list[str]:
    """What is wrong with the columns ``task`` reads (:data:`TASK_COLUMNS`) in its cached datasets: a missing column or
    one of another type, each naming dataset, column, expected and actual type. Cheap: reads ``dataset_info.json``."""
    problems = []
    for ds, columns in zip(REAL_DATASETS[task], TASK_COLUMNS[task]):
        folder = cached_splits(ds, data_dir).get(ds.split)
        if folder is None:
            continue  # missing_data says so
        info_path = folder / "dataset_info.json"
        features = json.loads(info_path.read_text()).get("features")
        if not isinstance(features, dict):
            continue  # datasets always writes the features; a bare split marker (tests) has none to check
        for column, expected in columns.items():
            if column not in features:
                problems.append(f"{ds.describe()}: column {column!r} (expected type {expected or 'any'}) is missing; "
                                f"its columns: {sorted(features)} ({info_path})")
                continue
            actual = feature_type(features[column])
            if expected is not None and not _type_matches(expected, actual):
                problems.append(f"{ds.describe()}: column {column!r} has type {actual}, expected {expected} "
                                f"({info_path})")
    return problems


def default_data_dir() -> Path:
    """``$MMMAMBA_BENCH_DATA`` if set, else ``~/.cache/mmmamba_bench/datasets``."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmmamba_bench" / "datasets"


def offline_env(data_dir: Path) -> dict[str, str]:
    """Environment for an offline lmms-eval run over ``data_dir``.

    Set these before ``datasets`` / ``huggingface_hub`` / ``lmms_eval`` are imported (they read the flags at import),
    e.g. in ``os.environ`` at CLI start-up or in the environment of a subprocess.
    """
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "LMMS_EVAL_DATASETS_CACHE": str(Path(data_dir).expanduser().resolve()),
    }


def cached_splits(ds: HubDataset, data_dir: Path) -> dict[str, Path]:
    """Splits of ``ds`` present in the datasets cache ``data_dir`` -> the folder holding them (empty if none)."""
    root = Path(data_dir) / ds.cache_folder
    found: dict[str, Path] = {}
    for info in sorted(root.glob(f"{ds.config or '*'}/*/*/dataset_info.json")):
        try:
            splits = json.loads(info.read_text()).get("splits") or {}
        except (OSError, json.JSONDecodeError):
            continue
        for split in splits:
            found.setdefault(split, info.parent)
    return found


def fingerprint(task: str, data_dir: Path) -> list[dict[str, str | None]]:
    """What identifies the local data of ``task``: per dataset, the cache folder holding its split (datasets names it
    by config, version and content hash) and the sha256 of its ``dataset_info.json`` (None where it is missing)."""
    out = []
    for ds in REAL_DATASETS[task]:
        folder = cached_splits(ds, data_dir).get(ds.split)
        info = folder / "dataset_info.json" if folder is not None else None
        out.append({"dataset": ds.repo, "config": ds.config, "split": ds.split,
                    "folder": str(folder.relative_to(data_dir)) if folder is not None else None,
                    "dataset_info_sha256": (hashlib.sha256(info.read_bytes()).hexdigest()
                                            if info is not None and info.is_file() else None)})
    return out


def missing_data(task: str, data_dir: Path) -> list[str]:
    """Human-readable descriptions of what ``task`` lacks in ``data_dir`` (empty when everything is there)."""
    problems = []
    for ds in REAL_DATASETS[task]:
        if ds.split not in cached_splits(ds, data_dir):
            problems.append(f"{ds.describe()} is not in the local datasets cache (looked under "
                            f"{Path(data_dir) / ds.cache_folder})")
    return problems


def prefetch(tasks: Sequence[str], data_dir: Path) -> None:
    """Download and prepare the datasets of ``tasks`` into the cache ``data_dir`` (needs network)."""
    import datasets

    done = set()
    for task in tasks:
        for ds in REAL_DATASETS[task]:
            if (ds.repo, ds.config) in done:
                continue
            print(f"{task}: {ds.repo}" + (f" [{ds.config}]" if ds.config else ""), flush=True)
            datasets.load_dataset(ds.repo, ds.config, cache_dir=str(data_dir))
            done.add((ds.repo, ds.config))


def main(argv: Sequence[str] | None = None) -> int:
    from mmmamba_bench.benchmarks import resolve_tasks

    parser = argparse.ArgumentParser(description="Fetch the real benchmarks into a local datasets cache (online).")
    parser.add_argument("tasks", nargs="?", default="paper", help="task spec, e.g. paper or paper_mme,paper_gqa")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: %(default)s")
    args = parser.parse_args(argv)
    tasks = [t for t in resolve_tasks(args.tasks) if t in REAL_DATASETS]
    prefetch(tasks, args.data_dir)
    for task in tasks:
        problems = missing_data(task, args.data_dir)
        print(f"{task}: " + ("ok" if not problems else "; ".join(problems)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
