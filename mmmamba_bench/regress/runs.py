"""Reading an evaluation run for comparison: lmms-eval's results JSON and its per-sample logs, paired by document.

A run folder is what ``mmmamba-bench eval --log-samples`` (or ``lmms-eval --log_samples``) writes:
``<folder>/[<label>/]<stamp>_results.json`` and ``<stamp>_samples_<task>.jsonl`` beside it. The newest results file
is taken; its samples must be there for every task. Anything that makes two runs incomparable is a
:class:`NotComparable` naming what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_SUFFIX = "_results.json"


class NotComparable(ValueError):
    """Two runs cannot be compared (different tasks, documents, task versions, or missing logs)."""


@dataclass
class Run:
    folder: Path
    results_file: Path
    results: dict[str, Any]
    samples: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # task -> doc_id -> sample

    @property
    def tasks(self) -> list[str]:
        return sorted(self.results.get("results", {}))

    def version(self, task: str) -> Any:
        return (self.results.get("versions") or {}).get(task)


def find_results_file(folder: Path) -> Path:
    folder = Path(folder)
    if folder.is_file() and folder.name.endswith(RESULTS_SUFFIX):
        return folder
    if not folder.is_dir():
        raise NotComparable(f"{folder}: not an evaluation run folder (not found)")
    files = sorted(folder.rglob(f"*{RESULTS_SUFFIX}"))
    if not files:
        raise NotComparable(f"{folder}: no *{RESULTS_SUFFIX} (not an evaluation run folder?)")
    parents = {f.parent for f in files}
    if len(parents) > 1:
        raise NotComparable(f"{folder} holds runs of several models ({', '.join(sorted(p.name for p in parents))});"
                            f" point at one of those folders")
    return max(files, key=lambda f: f.name)  # names start with a sortable time stamp


def load_run(folder: str | Path) -> Run:
    """The newest results file under ``folder`` with its per-sample logs (every task must have one)."""
    results_file = find_results_file(Path(folder))
    try:
        results = json.loads(results_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NotComparable(f"{results_file}: unreadable ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        raise NotComparable(f"{results_file}: not an lmms-eval results file (no 'results' object)")
    run = Run(Path(folder), results_file, results)
    stamp = results_file.name[: -len(RESULTS_SUFFIX)]
    for task in run.tasks:
        path = results_file.parent / f"{stamp}_samples_{task}.jsonl"
        if not path.is_file():
            raise NotComparable(f"{results_file}: no per-sample log for task {task!r} ({path.name} missing); "
                                f"evaluate with --log-samples")
        by_doc: dict[int, dict[str, Any]] = {}
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                    doc_id = int(sample["doc_id"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise NotComparable(f"{path}:{line_no}: not a per-sample record ({exc})") from None
                if doc_id in by_doc:
                    raise NotComparable(f"{path}:{line_no}: document {doc_id} appears twice")
                by_doc[doc_id] = sample
        if not by_doc:
            raise NotComparable(f"{path}: no samples")
        run.samples[task] = by_doc
    return run


def _doc_identity(sample: dict[str, Any]) -> Any:
    """What identifies a document across runs: its target and its own id fields (not lmms-eval's doc_hash, which is
    the same for every sample)."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    ident = {k: doc[k] for k in ("id", "question_id", "index", "row", "question") if k in doc}
    return json.dumps([sample.get("target"), ident], sort_keys=True, default=str)


def check_comparable(baseline: Run, candidate: Run) -> None:
    """Raise :class:`NotComparable` naming the first difference of tasks, task versions or documents."""
    if baseline.tasks != candidate.tasks:
        only_b = sorted(set(baseline.tasks) - set(candidate.tasks))
        only_c = sorted(set(candidate.tasks) - set(baseline.tasks))
        raise NotComparable(f"the runs evaluated different tasks: only in the baseline {only_b}, only in the "
                            f"candidate {only_c}")
    for task in baseline.tasks:
        vb, vc = baseline.version(task), candidate.version(task)
        if vb != vc:
            raise NotComparable(f"task {task!r} has version {vb!r} in the baseline and {vc!r} in the candidate")
        docs_b, docs_c = baseline.samples[task], candidate.samples[task]
        if docs_b.keys() != docs_c.keys():
            only_b = sorted(set(docs_b) - set(docs_c))[:5]
            only_c = sorted(set(docs_c) - set(docs_b))[:5]
            raise NotComparable(f"task {task!r}: different documents ({len(docs_b)} vs {len(docs_c)}; only in the "
                                f"baseline e.g. {only_b}, only in the candidate e.g. {only_c})")
        for doc_id in sorted(docs_b):
            if _doc_identity(docs_b[doc_id]) != _doc_identity(docs_c[doc_id]):
                raise NotComparable(f"task {task!r}: document {doc_id} differs between the runs "
                                    f"(target / id: {_doc_identity(docs_b[doc_id])} vs "
                                    f"{_doc_identity(docs_c[doc_id])})")
