"""``mmmamba-bench eval``: lmms-eval's ``simple_evaluate`` over our adapter, with results written atomically.

The scores are lmms-eval's own: its results dict is written unchanged (in lmms-eval's layout,
``<output>/<label>/<timestamp>_results.json``, plus ``..._samples_<task>.jsonl``) through a temporary file and a
rename, so an interrupted run never leaves a truncated results file for the report to read.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from mmmamba_bench.results import atomic_write, write_json_atomic

log = logging.getLogger(__name__)


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
    :func:`mmmamba_bench.assets.default_mini_data_dir`).
    """
    from mmmamba_bench.assets import default_mini_data_dir
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.eval.tasks import check_tasks, include_paths, resolve_tasks

    _offline_env(data_dir)
    path = resolve_model(model)
    label = label or path.name
    task_names = resolve_tasks(tasks)
    mini_data_dir = Path(mini_data_dir) if mini_data_dir is not None else default_mini_data_dir()
    check_tasks(task_names, data_dir, mini_data_dir=mini_data_dir)  # missing data / judge: before any model loads
    with tempfile.TemporaryDirectory(prefix="mmmamba_tasks_") as overlay:
        return _evaluate(path, label, task_names, output, include_paths(mini_data_dir, overlay), device=device,
                         dtype=dtype, batch_size=batch_size, limit=limit, log_samples=log_samples, seed=seed,
                         ssd_backend=ssd_backend)


def _evaluate(path: Path, label: str, task_names: list[str], output: str | Path, task_folders: list[str], *,
              device: str | None, dtype: str, batch_size: int, limit: int | None, log_samples: bool, seed: int,
              ssd_backend: str) -> Path:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    # batch_size reaches the adapter through simple_evaluate's own argument, not model_args.
    args = {"pretrained": str(path), "label": label, "dtype": dtype, "ssd_backend": ssd_backend}
    if device:
        args["device"] = device
    model_args = ",".join(f"{k}={v}" for k, v in args.items())
    log.info("evaluating %s on %s", label, ", ".join(task_names))
    results = simple_evaluate(model="mmmamba", model_args=model_args, tasks=task_names,
                              task_manager=TaskManager(include_path=task_folders), batch_size=batch_size,
                              limit=limit, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed)
    if results is None:
        raise RuntimeError("lmms-eval returned no results (non-zero rank?)")
    samples = results.pop("samples", None)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder = Path(output) / label
    out = write_json_atomic(folder / f"{stamp}_results.json", results, default=str)
    if samples:
        for task, rows in samples.items():
            _write_jsonl_atomic(folder / f"{stamp}_samples_{task}.jsonl", rows)
    log.info("wrote %s", out)
    return out


def _write_jsonl_atomic(path: Path, rows: list) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
