"""What every ``mmmamba-bench eval`` shares, ours and the baselines' (:mod:`~mmmamba_bench.eval.runner`,
:mod:`~mmmamba_bench.eval.baseline`): the checks before a model loads, the offline data environment, the label, and
how per-sample records are written."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from mmmamba_bench.results import atomic_write

RESULTS_KEY = "mmmamba_bench"  # the key this project adds to lmms-eval's results JSON


def offline_env(data_dir: str | Path | None) -> None:
    """Point datasets / lmms-eval at the local copies of the real benchmarks (tasks/README.md); never the hub.

    Must run before ``datasets`` or ``lmms_eval`` is imported: both read these variables at import time.
    """
    from mmmamba_bench.data import real

    os.environ.update(real.offline_env(Path(data_dir) if data_dir is not None else real.default_data_dir()))


def prepare_tasks(tasks: str, limit: int | None, data_dir: str | Path | None,
                  mini_data_dir: str | Path | None) -> tuple[list[str], int | None, Path]:
    """The checks every evaluation makes before a model loads: task names, ``limit`` rounded to whole clusters, the
    mini-suite generated when absent, the imports lmms-eval needs, each task's data. Returns ``(task_names, limit,
    mini_data_dir)``."""
    from mmmamba_bench import preflight
    from mmmamba_bench.assets import default_mini_data_dir
    from mmmamba_bench.data import minisuite
    from mmmamba_bench.eval.tasks import MINI_TASKS, check_tasks, cluster_limit, resolve_tasks

    task_names = resolve_tasks(tasks)
    limit = cluster_limit(task_names, limit)
    mini_data_dir = Path(mini_data_dir) if mini_data_dir is not None else default_mini_data_dir()
    generate_mini = any(t in MINI_TASKS for t in task_names) and not minisuite.suite_present(mini_data_dir)
    preflight.check([*preflight.evaluation_needs(), *(preflight.DATA_GENERATION if generate_mini else ())])
    if generate_mini:
        minisuite.ensure_suite(mini_data_dir)
    check_tasks(task_names, data_dir, mini_data_dir=mini_data_dir)  # missing data / judge: before any model loads
    return task_names, limit, mini_data_dir


def check_label(label: str) -> str:
    """``label`` names a folder under ``--output``: one path component of printable characters."""
    if (not label or label in (".", "..") or "/" in label or "\\" in label or label != label.strip()
            or not label.isprintable()):
        raise ValueError(f"--label {label!r}: must be one folder name (no '/', '\\', leading or trailing spaces, "
                         f"'.' or '..')")
    return label


def in_document_order(rows: list[dict]) -> list[dict]:
    """lmms-eval's per-sample records of one task in the order a single process logs them, whatever the number of
    processes.

    One process logs the documents in order, once per filter (all documents for the first filter, then for the
    next). With N processes, lmms-eval hands rank 0 the shards one after another (rank 0's documents 0, N, 2N ...,
    then rank 1's 1, N+1 ...), each shard filter after filter. A record does not name its filter, but within a shard
    the k-th record of a document belongs to the k-th filter, so sorting by (k, document id) restores the order.
    """
    seen: Counter = Counter()
    keyed = []
    for row in rows:
        keyed.append(((seen[row["doc_id"]], row["doc_id"]), row))
        seen[row["doc_id"]] += 1
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


def write_jsonl_atomic(path: Path, rows: list) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
