"""The offline mini-suite: seven small lmms-eval tasks, one per answer format of the paper's nine benchmarks.

``generate(out_dir, seed)`` writes ``{task}_{split}.parquet`` for every task and split (train / validation / test)
plus ``manifest.json`` (row counts and sha256 of every file). The same seed gives byte-identical files.
``iter_examples(data_dir, split)`` yields decoded training examples (image + the exact lmms-eval prompt + answer).

What is guaranteed about the splits
- no PNG appears twice anywhere in the suite (every image's sha256 is unique across tasks and splits), so no test
  image is seen in training;
- no handwritten digit instance (sklearn's 1,797) is shared between splits;
- the 12 photos and 3 textures are the same source pictures in every split (different random crops, mirrorings,
  sizes and grid positions): like a closed-vocabulary benchmark, the suite measures recognising these objects, not
  generalising to unseen photos.

Run ``mmmamba-bench data`` to (re)generate it (default folder: :func:`mmmamba_bench.assets.default_mini_data_dir`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmmamba_bench.data.minitasks import BUILDERS, Canvas, Item
from mmmamba_bench.data.prompts import task_prompt
from mmmamba_bench.data.sources import SPLITS, load_sources
from mmmamba_bench.images import to_rgb

log = logging.getLogger(__name__)

SCHEMA_NAME = "mmmamba-bench/minisuite/v1"
MANIFEST = "manifest.json"
TASKS: tuple[str, ...] = tuple(BUILDERS)

# Items (images) per split: (train, validation, test). Rows per item: MME 2 (a question pair), POPE 12 (2 positive
# questions + 2 negatives per sampling split x 3 splits), MMBench 4 (one per rotation), the others 1.
# The train split is large on purpose: a ~1M-parameter probe trained for a fixed number of steps scored far higher
# with 2.5x these train sizes than with 1x (see tasks/README.md).
SIZES: dict[str, tuple[int, int, int]] = {
    "mini_mme": (1500, 40, 150),
    "mini_pope": (500, 10, 20),
    "mini_mmbench": (750, 10, 60),
    "mini_seed": (1500, 40, 120),
    "mini_sqa": (1500, 40, 120),
    "mini_textvqa": (1500, 40, 120),
    "mini_gqa": (1500, 40, 120),
}

SCHEMA = pa.schema([
    ("task", pa.string()),
    ("split", pa.string()),
    ("row", pa.int32()),
    ("id", pa.string()),
    ("group", pa.string()),  # rows about the same image (MME pair, POPE image) or question (MMBench rotations)
    ("category", pa.string()),  # MME category, POPE negative-sampling split, question type elsewhere
    ("image", pa.binary()),  # PNG bytes
    ("question", pa.string()),
    ("options", pa.list_(pa.string())),  # multiple choice only
    ("hint", pa.string()),  # ScienceQA-style context ("" if none)
    ("answer", pa.string()),
    ("answers", pa.list_(pa.string())),  # reference answers (10 for TextVQA, else [answer])
    ("rotation", pa.int32()),  # MMBench circular rotation (0 elsewhere)
])
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


class MiniSuiteDataError(ValueError):
    """A mini-suite file or row is missing, empty, malformed or has an undecodable image."""


@dataclass(frozen=True)
class Example:
    """One training / evaluation example: the image, the exact prompt lmms-eval's doc_to_text gives, the answer."""

    task: str
    image: Image.Image
    question_prompt: str
    answer: str
    id: str = ""


def default_data_dir() -> Path:
    """Where the suite is generated and read by default (:func:`mmmamba_bench.assets.default_mini_data_dir`)."""
    from mmmamba_bench.assets import default_mini_data_dir

    return default_mini_data_dir()


def file_name(task: str, split: str) -> str:
    return f"{task}_{split}.parquet"


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


def _rows(task: str, split: str, items: Sequence[Item]) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for g, item in enumerate(items):
        for q in item.questions:
            row = len(columns["row"])
            values = {
                "task": task, "split": split, "row": row, "id": f"{task}-{split}-{row:05d}",
                "group": f"{task}-{split}-g{g:04d}", "category": q.category, "image": item.image,
                "question": q.question, "options": list(q.options), "hint": q.hint, "answer": q.answer,
                "answers": list(q.answers) or [q.answer], "rotation": q.rotation,
            }
            for name in COLUMNS:
                columns[name].append(values[name])
    return columns


def suite_present(data_dir: Path) -> bool:
    """True when ``data_dir`` holds any part of a mini-suite: its manifest or one of its parquet files."""
    data_dir = Path(data_dir)
    return (data_dir / MANIFEST).exists() or any(
        (data_dir / file_name(task, split)).exists() for task in TASKS for split in SPLITS)


def ensure_suite(data_dir: Path) -> bool:
    """Generate the suite into ``data_dir`` when it holds none at all (a fresh install); True if it did.

    A present suite is left alone, even a broken one: checking it is the caller's job (a broken suite is an error
    to report, not something to overwrite behind the user's back).
    """
    if suite_present(data_dir):
        return False
    log.info("no mini-suite in %s: generating it (deterministic, from images shipped in scikit-learn and "
             "scikit-image; takes about 10 s)", data_dir)
    generate(data_dir)
    return True


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out_dir: Path, seed: int = 0) -> dict:
    """Write every ``{task}_{split}.parquet`` and ``manifest.json`` into ``out_dir``; return the manifest.

    Deterministic: the same seed (and package versions) gives byte-identical files. Test images are drawn first, so
    the test split does not depend on the train/validation sizes. The suite is built in a temporary folder beside
    ``out_dir`` and published by :func:`mmmamba_bench.results.publish_dir`: a new ``out_dir`` appears whole in one
    rename (two runs generating at once cannot leave a mixture), an existing one gets each file replaced atomically,
    the manifest last.
    """
    from mmmamba_bench.results import publish_dir

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        manifest = _write_suite(tmp, seed)
        publish_dir(tmp, out_dir, last=MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_suite(out_dir: Path, seed: int) -> dict:
    """Generate the suite into the (private, empty) folder ``out_dir``; return the manifest."""
    sources = load_sources(seed)
    seen: set[bytes] = set()
    files: dict[str, dict] = {}
    for split in ("test", "validation", "train"):
        for t, task in enumerate(TASKS):
            rng = np.random.default_rng([seed, t, SPLITS.index(split)])
            n_items = SIZES[task][SPLITS.index(split)]
            items = BUILDERS[task](Canvas(sources, split, rng, seen), n_items)
            columns = _rows(task, split, items)
            path = out_dir / file_name(task, split)
            pq.write_table(pa.Table.from_pydict(columns, schema=SCHEMA), path, compression="snappy",
                           row_group_size=256)
            files[path.name] = {"task": task, "split": split, "items": n_items, "rows": len(columns["row"]),
                                "sha256": sha256_file(path)}
    files = dict(sorted(files.items()))
    counts = {task: {split: files[file_name(task, split)]["rows"] for split in SPLITS} for task in TASKS}
    manifest = {
        "schema": SCHEMA_NAME,
        "seed": seed,
        "rows": counts,
        "test_rows": sum(c["test"] for c in counts.values()),
        "test_images": sum(SIZES[t][2] for t in TASKS),
        "files": files,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# Reading and validation
# ---------------------------------------------------------------------------------------------------------------------


def check_columns(names: Sequence[str], num_rows: int, where: str) -> None:
    """Raise :class:`MiniSuiteDataError` naming ``where`` if columns are missing or there are no rows."""
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise MiniSuiteDataError(f"{where}: missing column(s) {missing} (found {list(names)}); regenerate the data "
                                 f"with `mmmamba-bench data`")
    if num_rows == 0:
        raise MiniSuiteDataError(f"{where}: no rows; regenerate the data with `mmmamba-bench data`")


def read_table(path: Path) -> pa.Table:
    """Read one mini-suite parquet file, checking that it exists, parses, has every column and at least one row."""
    path = Path(path)
    if not path.is_file():
        raise MiniSuiteDataError(f"{path}: file not found; generate the data with "
                                 f"`mmmamba-bench data`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise MiniSuiteDataError(f"{path}: not a readable parquet file ({exc})") from exc
    check_columns(table.column_names, table.num_rows, str(path))
    return table


def decode_image(data: bytes | None, where: str) -> Image.Image:
    """PNG bytes -> 8-bit RGB PIL image (:func:`~mmmamba_bench.images.to_rgb`); a missing or corrupt image raises :class:`MiniSuiteDataError` naming ``where``."""
    if not data:
        raise MiniSuiteDataError(f"{where}: image is missing")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except Exception as exc:  # PIL raises several unrelated types for bad data
        raise MiniSuiteDataError(f"{where}: image cannot be decoded ({type(exc).__name__}: {exc})") from exc


def row_prompt(row: dict) -> str:
    """The prompt of one row (what lmms-eval's doc_to_text returns for it)."""
    return task_prompt(row["task"], row["question"], row["options"] or (), row["hint"] or "")


def iter_examples(data_dir: Path | None, split: str, tasks: Sequence[str] | None = None) -> Iterator[Example]:
    """Yield the decoded examples of ``split`` for ``tasks`` (default: all seven), task by task in row order.

    Multiple-choice answers are the option letter; MME / POPE answers are Yes/No (yes/no); TextVQA gives its
    canonical answer (the most common reference). Errors name the file and the row. Consecutive rows about one
    image (an MME pair, a POPE image's questions, MMBench's rotations) share one decoded image object: treat it as
    read-only.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    for task in tasks or TASKS:
        if task not in TASKS:
            raise ValueError(f"unknown mini task {task!r}; known: {list(TASKS)}")
        path = data_dir / file_name(task, split)
        png, image = None, None
        for i, row in enumerate(read_table(path).to_pylist()):
            if row["image"] != png or image is None:
                png, image = row["image"], decode_image(row["image"], f"{path} row {i} ({task}, {split})")
            yield Example(task=task, image=image, question_prompt=row_prompt(row), answer=row["answer"], id=row["id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the offline mini-suite parquet files.")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the mini-suite's default "
                                                               "folder, see mmmamba_bench.assets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = args.out or default_data_dir()
    manifest = generate(args.out, seed=args.seed)
    for task, counts in manifest["rows"].items():
        print(f"{task:14s} " + "  ".join(f"{s}={n}" for s, n in counts.items()))
    print(f"test rows: {manifest['test_rows']} over {manifest['test_images']} test images -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
