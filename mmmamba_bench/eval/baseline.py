"""``mmmamba-bench eval --model <baseline card>``: the paper's Table-1 baselines evaluated by lmms-eval's own models.

A baseline card (``models/<name>.yaml`` with ``lmms_eval``) names the built-in lmms-eval model that evaluates the
release (``llava_hf``, ``qwen_vl``, ``fuyu`` ...) and its ``model_args``; ``pretrained`` is the card's local path.
Before anything loads: a card without an adapter says why; missing weights name the path they were looked for at;
the model must be in the installed lmms-eval's registry and its module must import (e.g. ``llava_hf`` needs
decord). The results are written as ``eval`` writes ours (``<output>/<label>/<stamp>_results.json``, per-sample
JSONL beside it), with the ``"mmmamba_bench"`` record naming the card, the lmms-eval model and its arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mmmamba_bench.cards import WEIGHTS_ENV, ModelCard

log = logging.getLogger(__name__)


def weights_dir(card: ModelCard) -> Path:
    """The card's local weights folder; an adapter-less card or a missing folder is a clear error."""
    spec = card.lmms_eval
    if spec is None:
        raise ValueError(f"model card {card.name!r} is one of ours (no 'lmms_eval'); evaluate it with our adapter")
    if spec.model is None:
        raise ValueError(f"model card {card.name!r} (paper row {card.paper_row!r}): {spec.note}")
    try:
        path = card.local_path()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"model card {card.name!r} (lmms-eval model {spec.model}): {exc}") from None
    if not path.is_dir():
        raise FileNotFoundError(f"model card {card.name!r} (lmms-eval model {spec.model}): weights not found at "
                                f"{path}: download {card.checkpoint} there (the card's path: {card.path}; "
                                f"{WEIGHTS_ENV} names the folder holding the checkpoints)")
    return path


def adapter_class_path(model: str) -> str:
    """The class lmms-eval builds for ``model`` (its registry's chat class, else the simple one)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    try:
        manifest = MODEL_REGISTRY_V2.get_manifest(model)
    except Exception as exc:  # noqa: BLE001 - lmms-eval raises its own error types for unknown names
        raise ValueError(f"lmms-eval has no model {model!r} ({type(exc).__name__}: {exc})") from None
    path = manifest.chat_class_path or manifest.simple_class_path
    if not path:
        raise ValueError(f"lmms-eval's model {model!r} has no class")
    return path


def check_adapter_imports(model: str) -> str:
    """Import the lmms-eval model's module now (not after the tasks load); a failure names the missing module."""
    class_path = adapter_class_path(model)
    module = class_path.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"lmms-eval model {model!r} ({class_path}) cannot be imported: {type(exc).__name__}: "
                           f"{exc}") from None
    return class_path


def model_args(card: ModelCard, path: Path, device: str | None) -> dict[str, str]:
    args = {"pretrained": str(path), **card.lmms_eval.model_args}
    if device:
        args["device"] = device
    return args


def run_baseline_eval(card: ModelCard, tasks: str, output: str | Path, *, label: str | None = None,
                      device: str | None = None, batch_size: int = 1, limit: int | None = None,
                      data_dir: str | Path | None = None, log_samples: bool = True, seed: int = 0,
                      mini_data_dir: str | Path | None = None, num_processes: int = 1) -> Path:
    """Evaluate a baseline card's release with its lmms-eval model; returns the results file."""
    from mmmamba_bench import provenance
    from mmmamba_bench.eval.common import (RESULTS_KEY, check_label, in_document_order, offline_env, prepare_tasks,
                                           write_jsonl_atomic)
    from mmmamba_bench.eval.tasks import data_identity, include_paths
    from mmmamba_bench.outputs import check_output_dir
    from mmmamba_bench.results import write_json_atomic

    path = weights_dir(card)
    if num_processes != 1:
        raise ValueError(f"--num-processes {num_processes} with a baseline card: launch lmms-eval's own model "
                         f"with `accelerate launch -m lmms_eval --model {card.lmms_eval.model}` instead")
    offline_env(data_dir)
    label = check_label(label or card.name)
    check_output_dir(output, "--output")
    task_names, limit, mini_data_dir = prepare_tasks(tasks, limit, data_dir, mini_data_dir)
    class_path = check_adapter_imports(card.lmms_eval.model)
    args = model_args(card, path, device)
    folder = Path(output) / label
    stamp = time.strftime("%Y%m%dT%H%M%S")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="mmmamba_tasks_") as workdir:
        manager = TaskManager(include_path=include_paths(mini_data_dir, workdir), include_defaults=False)
        log.info("evaluating %s with lmms-eval's %s (%s) on %s", card.name, card.lmms_eval.model, class_path,
                 ", ".join(task_names))
        results = simple_evaluate(model=card.lmms_eval.model, model_args=",".join(f"{k}={v}" for k, v in args.items()),
                                  tasks=task_names, task_manager=manager, batch_size=batch_size, limit=limit,
                                  log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed,
                                  cli_args=argparse.Namespace(output_path=str(folder), process_with_media=False))
    if results is None:
        raise RuntimeError("lmms-eval returned no results")
    samples = results.pop("samples", None)
    results[RESULTS_KEY] = record(card, label, class_path, args, task_names, limit,
                                  data_identity(task_names, data_dir, mini_data_dir=mini_data_dir), provenance)
    for task, rows in (samples or {}).items():
        write_jsonl_atomic(folder / f"{stamp}_samples_{task}.jsonl", in_document_order(rows))
    return write_json_atomic(folder / f"{stamp}_results.json", results, default=str)


def record(card: ModelCard, label: str, class_path: str, args: dict[str, str], task_names: list[str],
           limit: int | None, data: Any, provenance) -> dict[str, Any]:
    return {"model": {"label": label, "card": card.name, "paper_row": card.paper_row, "checkpoint": card.checkpoint,
                      "path": args["pretrained"], "lmms_eval_model": card.lmms_eval.model, "class": class_path,
                      "model_args": args},
            "code_path": {"model": f"lmms-eval {card.lmms_eval.model} ({class_path})"},
            "tasks": list(task_names), "limit": limit, "world_size": 1, "data": data,
            "packages": provenance.package_versions(), "project": provenance.project()}
