"""``mmmamba-bench eval``: lmms-eval's ``simple_evaluate`` over a constructed adapter, results written atomically.

The scores are lmms-eval's own: its results dict keeps lmms-eval's layout
(``<output>/<label>/<timestamp>_results.json``, plus ``..._samples_<task>.jsonl``) with one top-level key added,
``"mmmamba_bench"`` (:data:`RESULTS_KEY`, written by :func:`provenance_record`): the code path that ran (SSD scan /
step backend, attention, decode path, CUDA graph, dtype, device name), the threads, the package versions, the
project's version and git commit, and the identity of the data. Every file goes through a temporary file and a
rename, the results file last, so its presence means the run is complete and a reader never sees a truncated file.

Before any model is loaded: the imports an evaluation makes are checked (:mod:`mmmamba_bench.preflight`), a missing
mini-suite is generated (a present but broken one is an error), the tasks' data is checked, and the checkpoint's
config, weight headers and tokenizer are read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mmmamba_bench.results import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

RESULTS_KEY = "mmmamba_bench"  # the key this project adds to lmms-eval's results JSON


def _offline_env(data_dir: str | Path | None) -> None:
    """Point datasets / lmms-eval at the local copies of the real benchmarks (tasks/README.md); never the hub.

    Must run before ``datasets`` or ``lmms_eval`` is imported: both read these variables at import time.
    """
    from mmmamba_bench.data import real

    os.environ.update(real.offline_env(Path(data_dir) if data_dir is not None else real.default_data_dir()))


def run_eval(model: str | Path, tasks: str, output: str | Path, *, label: str | None = None,
             device: str | None = None, dtype: str = "auto", batch_size: int = 8, limit: int | None = None,
             data_dir: str | Path | None = None, log_samples: bool = True, seed: int = 0,
             ssd_backend: str = "auto", mini_data_dir: str | Path | None = None) -> Path:
    """Evaluate ``model`` (a checkpoint directory or model card) on ``tasks``; returns the results file.

    data_dir: local datasets cache of the real benchmarks; mini_data_dir: the generated mini-suite (default
    :func:`mmmamba_bench.assets.default_mini_data_dir`; generated there when it holds no suite at all).
    ``limit`` is rounded up to whole clusters of jointly scored documents (:func:`~mmmamba_bench.eval.tasks.
    cluster_limit`).
    """
    from mmmamba_bench import preflight
    from mmmamba_bench.assets import default_mini_data_dir
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.data import minisuite
    from mmmamba_bench.eval.tasks import MINI_TASKS, check_tasks, cluster_limit, include_paths, resolve_tasks

    from mmmamba_bench.outputs import check_output_dir

    _offline_env(data_dir)
    path = resolve_model(model)
    label = check_label(label or path.name)
    check_output_dir(output, "--output")  # a file or an unwritable place: said now, not after the evaluation
    task_names = resolve_tasks(tasks)
    limit = cluster_limit(task_names, limit)
    mini_data_dir = Path(mini_data_dir) if mini_data_dir is not None else default_mini_data_dir()
    generate_mini = any(t in MINI_TASKS for t in task_names) and not minisuite.suite_present(mini_data_dir)
    preflight.check([*preflight.evaluation_needs(), *(preflight.DATA_GENERATION if generate_mini else ())])
    if generate_mini:
        minisuite.ensure_suite(mini_data_dir)
    check_tasks(task_names, data_dir, mini_data_dir=mini_data_dir)  # missing data / judge: before any model loads
    preflight.check(checkpoints=[path])
    with tempfile.TemporaryDirectory(prefix="mmmamba_tasks_") as overlay:
        return _evaluate(path, label, task_names, output, include_paths(mini_data_dir, overlay), device=device,
                         dtype=dtype, batch_size=batch_size, limit=limit, log_samples=log_samples, seed=seed,
                         ssd_backend=ssd_backend, data_dirs=(data_dir, mini_data_dir))


def _evaluate(path: Path, label: str, task_names: list[str], output: str | Path, task_folders: list[str], *,
              device: str | None, dtype: str, batch_size: int, limit: int | None, log_samples: bool, seed: int,
              ssd_backend: str, data_dirs: tuple[str | Path | None, Path]) -> Path:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mmmamba_bench.eval.adapter import MMMambaLMM

    args = {"pretrained": str(path), "label": label, "dtype": dtype, "ssd_backend": ssd_backend}
    if device:
        args["device"] = device
    lmm = MMMambaLMM(**args, batch_size=batch_size)
    data_dir, mini_data_dir = data_dirs
    # described now: lmms-eval's evaluate() ends with lm.clean(), which deletes the adapter's model
    record = provenance_record(lmm, task_names, limit, data_dir, mini_data_dir)
    log.info("evaluating %s on %s", label, ", ".join(task_names))
    # Only this project's task folders are indexed (lmms-eval's own ~2,000 built-in tasks take seconds to index and
    # none is used: every task we run is one of ours, resolve_tasks refuses any other name).
    manager = TaskManager(include_path=task_folders, include_defaults=False)
    # model_args is not used to build the model (it is built above) but recorded by lmms-eval in results["config"],
    # where reports read the label from it.
    folder = Path(output) / label
    # lmms-eval's aggregations write submission files (MMBench sheets, TextVQA JSON) under cli_args.output_path, or
    # into the current directory without one: keep them in the run's folder. process_with_media=False is lmms-eval's
    # own command-line default (scoring reads documents without their images, as `lmms-eval --model mmmamba` does).
    cli_args = argparse.Namespace(output_path=str(folder), process_with_media=False)
    results = simple_evaluate(model=lmm, cli_args=cli_args, model_args=",".join(f"{k}={v}" for k, v in args.items()), tasks=task_names,
                              task_manager=manager, batch_size=batch_size, limit=limit, log_samples=log_samples,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    if results is None:
        raise RuntimeError("lmms-eval returned no results (non-zero rank?)")
    samples = results.pop("samples", None)
    # how many requests went past the model's positions (warned once during the run), per task
    results[RESULTS_KEY] = {**record, "inputs": lmm.input_report()}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for task, rows in (samples or {}).items():
        _write_jsonl_atomic(folder / f"{stamp}_samples_{task}.jsonl", rows)
    out = write_json_atomic(folder / f"{stamp}_results.json", results, default=str)  # last: its presence = done
    log.info("wrote %s", out)
    return out


def check_label(label: str) -> str:
    """``label`` names a folder under ``--output``: one path component of printable characters."""
    if (not label or label in (".", "..") or "/" in label or "\\" in label or label != label.strip()
            or not label.isprintable()):
        raise ValueError(f"--label {label!r}: must be one folder name (no '/', '\\', leading or trailing spaces, "
                         f"'.' or '..')")
    return label


def provenance_record(lmm, task_names: list[str], limit: int | None, data_dir: str | Path | None,
                      mini_data_dir: Path) -> dict[str, Any]:
    """What produces an evaluation's scores (the ``"mmmamba_bench"`` key of the results JSON); call it with the
    adapter's model loaded, before the evaluation."""
    from mmmamba_bench import provenance
    from mmmamba_bench.eval.tasks import data_identity

    config = lmm.model.config
    return {
        "model": {"label": lmm.label, "path": str(lmm.model.source_dir), "kind": config.kind,
                  "layers": config.num_layers},
        "code_path": lmm.code_path(),
        "threads": provenance.threads(),
        "tasks": list(task_names),
        "limit": limit,
        "data": data_identity(task_names, data_dir, mini_data_dir=mini_data_dir),
        "packages": provenance.package_versions(),
        "project": provenance.project(),
    }


def _write_jsonl_atomic(path: Path, rows: list) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
