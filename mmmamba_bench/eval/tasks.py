"""Task discovery and preflight checks for lmms-eval runs.

- :func:`include_paths` gives lmms-eval the folders of this project's task YAMLs (``tasks/mini``, ``tasks/real``).
- :func:`resolve_tasks` expands a task spec such as ``"mini"``, ``"paper"`` or ``"mini_mme,paper_gqa"`` (task names
  and groups are defined in :mod:`mmmamba_bench.benchmarks`, re-exported here).
- :func:`check_tasks` fails fast, before any model is loaded, with a :class:`TaskSetupError` that names every task
  and what it lacks: generated mini-suite files, local copies of the real datasets, judge credentials.

Data locations: the mini tasks read the generated suite (``mmmamba-bench data``), by default ``tasks/mini/data/``
next to their YAMLs in a checkout (see :func:`mmmamba_bench.assets.default_mini_data_dir`; elsewhere through an
overlay, :func:`include_paths`); the ``paper_*`` tasks read a local datasets cache, ``data_dir`` (default
``$MMMAMBA_BENCH_DATA`` or ``~/.cache/mmmamba_bench/datasets``; see ``mmmamba_bench.data.real``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from mmmamba_bench.benchmarks import (GROUPS, JUDGE_TASKS, KNOWN_TASKS, MINI_TASKS, PAPER_TASKS, TaskSetupError,
                                      resolve_tasks)
from mmmamba_bench.data import real

__all__ = ["DOC_CLUSTER", "GROUPS", "JUDGE_TASKS", "KNOWN_TASKS", "MINI_TASKS", "PAPER_TASKS", "TaskSetupError",
           "check_tasks", "cluster_limit", "data_identity", "include_paths", "resolve_tasks", "write_mini_overlay"]

# Documents that are scored together, stored consecutively: a limited run must take whole clusters, or the headline
# metric is undefined (MME's acc+ over an image's question pair) or skewed (MMBench's circular groups). The mini POPE
# file stores each image's 4 random, 4 popular and 4 adversarial questions together, and f1_mean needs all 3 splits.
DOC_CLUSTER: dict[str, int] = {"mini_mme": 2, "mini_mmbench": 4, "mini_pope": 12, "paper_mme": 2}

# API_TYPE (lmms-eval's judge switch) -> the environment variables the judge client needs
JUDGE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "azure": ("AZURE_API_KEY", "AZURE_ENDPOINT"),
}


def include_paths(mini_data_dir: Path | str | None = None, overlay_dir: Path | str | None = None) -> list[str]:
    """The task folders for ``TaskManager(include_path=...)`` / ``--include_path``: ``tasks/mini``, ``tasks/real``.

    A mini YAML reads ``data/<task>_test.parquet`` beside it (lmms-eval resolves ``data_files`` against the YAML's
    folder). When the suite lives elsewhere (``mini_data_dir`` is not that folder: an installed wheel, or
    ``--data-dir``), ``overlay_dir`` receives one small YAML per mini task that ``include:``s the shipped YAML and
    points its ``data_files`` at ``mini_data_dir``; that folder then stands in for ``tasks/mini``.
    """
    from mmmamba_bench.assets import tasks_dir

    tasks = tasks_dir()
    mini, real_dir = tasks / "mini", tasks / "real"
    shipped_data = mini / "data"
    if mini_data_dir is None or Path(mini_data_dir).resolve() == shipped_data.resolve():
        return [str(mini), str(real_dir)]
    if overlay_dir is None:
        raise ValueError(f"mini-suite data in {mini_data_dir} (not {shipped_data}) needs an overlay_dir for the "
                         f"task YAMLs that point at it")
    return [str(write_mini_overlay(mini, Path(mini_data_dir), Path(overlay_dir))), str(real_dir)]


def write_mini_overlay(mini_tasks: Path, data_dir: Path, out: Path) -> Path:
    """Write ``out/<task>.yaml`` for every mini task: the shipped YAML with ``data_files`` under ``data_dir``."""
    import yaml

    from mmmamba_bench.data import minisuite

    out.mkdir(parents=True, exist_ok=True)
    for task in MINI_TASKS:
        shipped = mini_tasks / f"{task}.yaml"
        if not shipped.is_file():
            raise TaskSetupError([(task, f"task YAML {shipped} not found")])
        overlay = {"include": str(shipped.resolve()),
                   "dataset_kwargs": {"data_files": {"test": str((data_dir / minisuite.file_name(task, "test"))
                                                                 .resolve())}}}
        (out / f"{task}.yaml").write_text(f"# generated: {task} over {data_dir}\n" + yaml.safe_dump(overlay),
                                          encoding="utf-8")
    return out


def cluster_limit(task_names: Iterable[str], limit: int | None) -> int | None:
    """``limit`` rounded up so that every task's first ``limit`` documents are whole clusters (:data:`DOC_CLUSTER`).

    None stays None (no limit); a limit below 1 is an error naming the value.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {limit!r}")
    step = math.lcm(1, *(DOC_CLUSTER.get(t, 1) for t in task_names))
    return -(-limit // step) * step


def _mini_problems(task: str, data_dir: Path) -> list[str]:
    """What the generated data of mini task ``task`` lacks (its test split, as the YAML reads it)."""
    import pyarrow.parquet as pq

    from mmmamba_bench.data import minisuite

    regenerate = f"run `mmmamba-bench data --out {data_dir}` to generate it"
    manifest_path = data_dir / minisuite.MANIFEST
    path = data_dir / minisuite.file_name(task, "test")
    if not manifest_path.is_file() or not path.is_file():
        return [f"mini-suite data missing ({path if manifest_path.is_file() else manifest_path} not found); "
                f"{regenerate}"]
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][path.name]["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"{manifest_path} is unreadable or lacks {path.name} ({exc!r}); {regenerate}"]
    problems = []
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        minisuite.check_columns(schema.names, meta.num_rows, str(path))
        problems += [f"{path}: column {f.name!r} has type {schema.field(f.name).type}, expected {f.type}; {regenerate}"
                     for f in minisuite.SCHEMA if not schema.field(f.name).type.equals(f.type)]
    except Exception as exc:  # pyarrow errors, MiniSuiteDataError
        problems.append(f"{exc}")
    if minisuite.sha256_file(path) != expected:
        problems.append(f"{path} does not match the sha256 in {manifest_path} (edited or corrupt); {regenerate}")
    return problems


def _judge_problems() -> list[str]:
    api_type = os.environ.get("API_TYPE", "openai").strip().lower()
    needed = JUDGE_CREDENTIALS.get(api_type)
    if needed is None:
        return [f"needs a GPT judge, but API_TYPE={api_type!r} is not one of {sorted(JUDGE_CREDENTIALS)}"]
    missing = [name for name in needed if not os.environ.get(name, "").strip()]
    if missing:
        return [f"needs a GPT judge (API_TYPE={api_type}): set {' and '.join(missing)} (and MODEL_VERSION for the "
                f"judge model), or leave this task out (task group `paper_no_judge`)"]
    return []


def data_identity(task_names: Iterable[str], data_dir: Path | str | None = None, *,
                  mini_data_dir: Path | str | None = None) -> dict[str, Any]:
    """What identifies the data these tasks read (recorded with the scores): the mini-suite's folder and the sha256
    of its ``manifest.json`` (which lists every file's sha256); per real task, its datasets' cache folders and
    ``dataset_info.json`` hashes (:func:`mmmamba_bench.data.real.fingerprint`)."""
    from mmmamba_bench.assets import default_mini_data_dir
    from mmmamba_bench.data import minisuite

    task_names = list(task_names)
    out: dict[str, Any] = {}
    if any(t in MINI_TASKS for t in task_names):
        mini_dir = Path(mini_data_dir) if mini_data_dir is not None else default_mini_data_dir()
        manifest = mini_dir / minisuite.MANIFEST
        out["mini_suite"] = {"dir": str(mini_dir.resolve()),
                             "manifest_sha256": minisuite.sha256_file(manifest) if manifest.is_file() else None}
    paper = [t for t in task_names if t in PAPER_TASKS]
    if paper:
        real_dir = Path(data_dir).expanduser() if data_dir is not None else real.default_data_dir()
        out["real"] = {"dir": str(real_dir.resolve()), "tasks": {t: real.fingerprint(t, real_dir) for t in paper}}
    return out


def check_tasks(task_names: Iterable[str], data_dir: Path | str | None = None, *,
                mini_data_dir: Path | str | None = None) -> None:
    """Raise :class:`TaskSetupError` listing every problem that would stop or silently spoil these tasks.

    ``data_dir`` is the local datasets cache of the real benchmarks (default :func:`real.default_data_dir`); the
    mini tasks read ``mini_data_dir`` (default :func:`mmmamba_bench.assets.default_mini_data_dir`). Checks: known task
    name; mini-suite file present, well-formed (every column, of its type) and matching its manifest; real datasets present
    in ``data_dir`` with the split evaluated and the columns the task reads, of their types
    (:data:`~mmmamba_bench.data.real.TASK_COLUMNS`); judge credentials for judge-scored tasks. Nothing is downloaded; lmms-eval is not
    imported.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else real.default_data_dir()
    from mmmamba_bench.assets import default_mini_data_dir

    mini_dir = Path(mini_data_dir) if mini_data_dir is not None else default_mini_data_dir()
    task_names = list(task_names)
    problems: list[tuple[str, str]] = []
    paper = [t for t in task_names if t in PAPER_TASKS]
    if paper and not data_dir.is_dir():
        problems.append((", ".join(paper), f"data directory {data_dir} does not exist (set {real.DATA_DIR_ENV} or "
                                           f"pass the data dir; fetch the data once with network: "
                                           f"`python -m mmmamba_bench.data.real --data-dir DIR paper`)"))
    for task in task_names:
        if task in MINI_TASKS:
            found = _mini_problems(task, mini_dir)
        elif task in PAPER_TASKS:
            found = []
            if data_dir.is_dir():
                found += [f"{p}; fetch it once with network: `python -m mmmamba_bench.data.real --data-dir "
                          f"{data_dir} {task}`" for p in real.missing_data(task, data_dir)]
                found += real.column_problems(task, data_dir)
            if task in JUDGE_TASKS:
                found += _judge_problems()
        else:
            found = [f"unknown task; known tasks: {sorted(KNOWN_TASKS)}"]
        problems += [(task, what) for what in found]
    if problems:
        raise TaskSetupError(problems)
