"""Task discovery and preflight checks for lmms-eval runs.

- :func:`include_paths` gives lmms-eval the folders of this project's task YAMLs (``tasks/mini``, ``tasks/real``).
- :func:`resolve_tasks` expands a task spec such as ``"mini"``, ``"paper"`` or ``"mini_mme,paper_gqa"``.
- :func:`check_tasks` fails fast, before any model is loaded, with a :class:`TaskSetupError` that names every task
  and what it lacks: generated mini-suite files, local copies of the real datasets, judge credentials.

Data locations: the mini tasks read ``tasks/mini/data/`` (next to their YAMLs; generate it with
``python -m mmmamba_bench.data.minisuite``); the ``paper_*`` tasks read a local datasets cache, ``data_dir``
(default ``$MMMAMBA_BENCH_DATA`` or ``~/.cache/mmmamba_bench/datasets``; see ``mmmamba_bench.data.real``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from mmmamba_bench.data import real

MINI_TASKS: tuple[str, ...] = (
    "mini_mme", "mini_mmbench", "mini_pope", "mini_seed", "mini_sqa", "mini_textvqa", "mini_gqa",
)
PAPER_TASKS: tuple[str, ...] = tuple(real.REAL_DATASETS)  # paper_mme ... paper_gqa (POPE as its three splits)
JUDGE_TASKS: frozenset[str] = frozenset({"paper_mmvet"})
GROUPS: dict[str, tuple[str, ...]] = {
    "mini": MINI_TASKS,
    "paper": PAPER_TASKS,
    "paper_no_judge": tuple(t for t in PAPER_TASKS if t not in JUDGE_TASKS),
    "paper_pope": ("paper_pope_adv", "paper_pope_pop", "paper_pope_random"),
}
KNOWN_TASKS: frozenset[str] = frozenset(MINI_TASKS) | frozenset(PAPER_TASKS)

# API_TYPE (lmms-eval's judge switch) -> the environment variables the judge client needs
JUDGE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "azure": ("AZURE_API_KEY", "AZURE_ENDPOINT"),
}


class TaskSetupError(RuntimeError):
    """A task cannot run as set up; ``problems`` lists ``(task, what is missing)``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  - {task}: {what}" for task, what in problems)
        super().__init__(f"{len(problems)} task setup problem(s):\n{lines}")


def repo_root() -> Path:
    """The checkout that holds this package (``<repo>/mmmamba_bench``)."""
    return Path(__file__).resolve().parents[2]


def include_paths() -> list[str]:
    """The ``tasks/mini`` and ``tasks/real`` folders, for ``TaskManager(include_path=...)`` / ``--include_path``."""
    tasks = repo_root() / "tasks"
    folders = [tasks / "mini", tasks / "real"]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise TaskSetupError([("*", f"task folder(s) {missing} not found: mmmamba_bench must be used from a source "
                                    f"checkout (pip install -e <repo>), where tasks/ sits next to mmmamba_bench/")])
    return [str(f) for f in folders]


def resolve_tasks(spec: str) -> list[str]:
    """Expand a comma-separated task spec; groups: ``mini``, ``paper``, ``paper_no_judge``, ``paper_pope``.

    Order is kept and duplicates dropped. Unknown names raise :class:`TaskSetupError`.
    """
    out: list[str] = []
    unknown = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        names = GROUPS.get(name, (name,))
        for task in names:
            if task not in KNOWN_TASKS:
                unknown.append(task)
            elif task not in out:
                out.append(task)
    if unknown:
        raise TaskSetupError([(t, f"unknown task; known tasks: {sorted(KNOWN_TASKS)}, groups: {sorted(GROUPS)}")
                              for t in unknown])
    if not out:
        raise TaskSetupError([("*", f"empty task spec {spec!r}")])
    return out


def _mini_problems(task: str, data_dir: Path) -> list[str]:
    """What the generated data of mini task ``task`` lacks (its test split, as the YAML reads it)."""
    import pyarrow.parquet as pq

    from mmmamba_bench.data import minisuite

    regenerate = "run `python -m mmmamba_bench.data.minisuite` to generate it"
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
        minisuite.check_columns(meta.schema.to_arrow_schema().names, meta.num_rows, str(path))
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


def check_tasks(task_names: Iterable[str], data_dir: Path | str | None = None, *,
                mini_data_dir: Path | str | None = None) -> None:
    """Raise :class:`TaskSetupError` listing every problem that would stop or silently spoil these tasks.

    ``data_dir`` is the local datasets cache of the real benchmarks (default :func:`real.default_data_dir`); the
    mini tasks read ``tasks/mini/data`` next to their YAMLs (``mini_data_dir`` is for tests). Checks: known task
    name; mini-suite file present, well-formed and matching its manifest; real datasets present in ``data_dir``
    with the split evaluated; judge credentials for judge-scored tasks. Nothing is downloaded; lmms-eval is not
    imported.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else real.default_data_dir()
    mini_dir = Path(mini_data_dir) if mini_data_dir is not None else repo_root() / "tasks" / "mini" / "data"
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
            if task in JUDGE_TASKS:
                found += _judge_problems()
        else:
            found = [f"unknown task; known tasks: {sorted(KNOWN_TASKS)}"]
        problems += [(task, what) for what in found]
    if problems:
        raise TaskSetupError(problems)
