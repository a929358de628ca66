"""``mmmamba-bench eval``: lmms-eval's ``simple_evaluate`` over a constructed adapter, results written atomically.

The scores are lmms-eval's own: its results dict keeps lmms-eval's layout
(``<output>/<label>/<timestamp>_results.json``, plus ``..._samples_<task>.jsonl``) with one top-level key added,
``"mmmamba_bench"`` (:data:`RESULTS_KEY`, written by :func:`provenance_record`): the code path that ran (SSD scan /
step backend, attention, decode path, CUDA graph, dtype, device name), the threads, the package versions, the
project's version and git commit, and the identity of the data. Every file goes through a temporary file and a
rename, the results file last, so its presence means the run is complete and a reader never sees a truncated file.

Before any model is loaded: the imports an evaluation makes are checked (:mod:`mmmamba_bench.preflight`), a missing
mini-suite is generated (a present but broken one is an error), the tasks' data is checked, and the checkpoint's
config, weight headers and tokenizer are read. What is left is an :class:`EvalPlan`, which :func:`evaluate` runs.

Data parallelism (``num_processes`` > 1, ``mmmamba-bench eval --num-processes N``): after the checks, the plan is
written to a JSON file and ``accelerate launch --multi_gpu --num_processes N -m mmmamba_bench.eval.launched PLAN``
starts N processes (accelerate's torchrun launcher; one GPU each, or a gloo group on CPU) that each run
:func:`evaluate`. lmms-eval shards the requests round-robin by document, the adapter reports each process's rank and
the world size, lmms-eval gathers the per-sample results on rank 0, which alone aggregates them and writes the files
(samples in one process's order, :func:`in_document_order`). The same program runs under a launch of the user's own
(``accelerate launch ... -m mmmamba_bench eval ...``): then every process makes the checks itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmmamba_bench.eval.common import (RESULTS_KEY, check_label, in_document_order, prepare_tasks,  # noqa: F401
                                       write_jsonl_atomic)
from mmmamba_bench.eval.common import offline_env as _offline_env
from mmmamba_bench.results import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalPlan:
    """One checked evaluation, ready to run (:func:`evaluate`); JSON-serialisable, so that the processes of a
    data-parallel run each read the same plan. ``limit`` is already rounded to whole clusters; ``task_folders`` are
    the folders lmms-eval indexes; ``stamp`` names the output files."""

    model_dir: str
    label: str
    tasks: tuple[str, ...]
    output: str
    task_folders: tuple[str, ...]
    device: str | None
    dtype: str
    batch_size: int
    limit: int | None
    log_samples: bool
    seed: int
    ssd_backend: str
    data_dir: str | None
    mini_data_dir: str
    stamp: str

    @property
    def folder(self) -> Path:
        return Path(self.output) / self.label

    @property
    def results_file(self) -> Path:
        return self.folder / f"{self.stamp}_results.json"

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> EvalPlan:
        fields = json.loads(Path(path).read_text())
        return cls(**{**fields, "tasks": tuple(fields["tasks"]), "task_folders": tuple(fields["task_folders"])})


def run_eval(model: str | Path, tasks: str, output: str | Path, *, label: str | None = None,
             device: str | None = None, dtype: str = "auto", batch_size: int = 8, limit: int | None = None,
             data_dir: str | Path | None = None, log_samples: bool = True, seed: int = 0,
             ssd_backend: str = "auto", mini_data_dir: str | Path | None = None,
             num_processes: int = 1) -> Path | None:
    """Evaluate ``model`` (a checkpoint directory or model card) on ``tasks``; returns the results file.

    data_dir: local datasets cache of the real benchmarks; mini_data_dir: the generated mini-suite (default
    :func:`mmmamba_bench.assets.default_mini_data_dir`; generated there when it holds no suite at all).
    ``limit`` is rounded up to whole clusters of jointly scored documents (:func:`~mmmamba_bench.eval.tasks.
    cluster_limit`). ``num_processes`` > 1: data parallel in that many processes started by ``accelerate launch``
    (one GPU each; on CPU a gloo group), after the checks, which run once here. Returns None only in a non-zero rank
    of a launch made by someone else (``accelerate launch ... -m mmmamba_bench eval``): rank 0 writes the results.
    """
    from mmmamba_bench import preflight
    from mmmamba_bench.cards import find_card, resolve_model
    from mmmamba_bench.eval.tasks import include_paths
    from mmmamba_bench.outputs import check_output_dir

    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num-processes must be a positive integer, got {num_processes!r}")
    card = find_card(str(model))
    if card is not None and card.lmms_eval is not None:  # a baseline: lmms-eval's own model for its release
        from mmmamba_bench.eval.baseline import run_baseline_eval

        return run_baseline_eval(card, tasks, output, label=label, device=device, batch_size=batch_size,
                                 limit=limit, data_dir=data_dir, log_samples=log_samples, seed=seed,
                                 mini_data_dir=mini_data_dir, num_processes=num_processes)
    _offline_env(data_dir)
    path = resolve_model(model)
    label = check_label(label or path.name)
    check_output_dir(output, "--output")  # a file or an unwritable place: said now, not after the evaluation
    task_names, limit, mini_data_dir = prepare_tasks(tasks, limit, data_dir, mini_data_dir)
    preflight.check(checkpoints=[path])
    with tempfile.TemporaryDirectory(prefix="mmmamba_tasks_") as workdir:
        plan = EvalPlan(model_dir=str(path), label=label, tasks=tuple(task_names), output=str(output),
                        task_folders=tuple(include_paths(mini_data_dir, workdir)), device=device, dtype=dtype,
                        batch_size=batch_size, limit=limit, log_samples=log_samples, seed=seed,
                        ssd_backend=ssd_backend, data_dir=None if data_dir is None else str(data_dir),
                        mini_data_dir=str(mini_data_dir), stamp=time.strftime("%Y%m%dT%H%M%S"))
        if num_processes == 1:
            return evaluate(plan)
        return launch_data_parallel(plan, num_processes, Path(workdir))


def launch_data_parallel(plan: EvalPlan, num_processes: int, workdir: Path) -> Path:
    """Run ``plan`` in ``num_processes`` processes started by ``accelerate launch`` and return rank 0's results file.

    ``--multi_gpu`` is accelerate's launcher that starts several local processes (torchrun) on GPUs and on CPU alike
    (``--cpu`` would start one); on CPU the adapter asks accelerate for a gloo group (``Accelerator(cpu=True)``).
    ``--main_process_port 0``: a free port, so that two runs on one machine do not collide. An error in any process ends the run with an error here;
    a results file that records another world size than asked is an error too (no silent single-process run).
    """
    import torch

    from mmmamba_bench.eval.adapter import launched_world_size

    if launched_world_size() > 1:
        raise ValueError(f"--num-processes {num_processes} inside a process that a launcher already started "
                         f"(WORLD_SIZE={launched_world_size()}): launch once, one way or the other")
    device = plan.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cpu = torch.device(device).type == "cpu"
    if not on_cpu:
        if torch.device(device).index is not None:
            raise ValueError(f"--device {device} with --num-processes {num_processes}: every process would use one "
                             f"GPU; pass --device cuda (process i takes GPU i)")
        if torch.cuda.device_count() < num_processes:
            raise ValueError(f"--num-processes {num_processes} needs {num_processes} GPUs; "
                             f"{torch.cuda.device_count()} visible (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); or evaluate on --device cpu")
    plan_file = plan.write(workdir / "plan.json")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "mmmamba_bench.eval.launched", str(plan_file)]
    log.info("evaluating in %d processes on %s: %s", num_processes, "CPU (gloo)" if on_cpu else "GPUs",
             shlex.join(command))
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        raise RuntimeError(f"data-parallel evaluation failed: `accelerate launch` exited with {returncode} (the "
                           f"processes' errors are above)")
    if not plan.results_file.is_file():
        raise RuntimeError(f"data-parallel evaluation ended without writing {plan.results_file}")
    recorded = json.loads(plan.results_file.read_text())[RESULTS_KEY].get("world_size")
    if recorded != num_processes:
        raise RuntimeError(f"asked for {num_processes} processes, but {plan.results_file} was evaluated by "
                           f"{recorded}")
    return plan.results_file


def evaluate(plan: EvalPlan) -> Path | None:
    """Build the adapter, let lmms-eval evaluate it, write the results: the work of every process of a run.

    In a data-parallel run every process evaluates its shard and rank 0 alone receives, aggregates and writes the
    results (returning the results file); the other ranks return None.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mmmamba_bench.eval.adapter import MMMambaLMM

    args = {"pretrained": plan.model_dir, "label": plan.label, "dtype": plan.dtype, "ssd_backend": plan.ssd_backend}
    if plan.device:
        args["device"] = plan.device
    lmm = MMMambaLMM(**args, batch_size=plan.batch_size)
    # described now: lmms-eval's evaluate() ends with lm.clean(), which deletes the adapter's model
    record = provenance_record(lmm, list(plan.tasks), plan.limit, plan.data_dir, Path(plan.mini_data_dir))
    if lmm.rank == 0:
        log.info("evaluating %s on %s", plan.label, ", ".join(plan.tasks))
    # Only this project's task folders are indexed (lmms-eval's own ~2,000 built-in tasks take seconds to index and
    # none is used: every task we run is one of ours, resolve_tasks refuses any other name).
    manager = TaskManager(include_path=list(plan.task_folders), include_defaults=False)
    # model_args is not used to build the model (it is built above) but recorded by lmms-eval in results["config"],
    # where reports read the label from it.
    # lmms-eval's aggregations write submission files (MMBench sheets, TextVQA JSON) under cli_args.output_path, or
    # into the current directory without one: keep them in the run's folder. process_with_media=False is lmms-eval's
    # own command-line default (scoring reads documents without their images, as `lmms-eval --model mmmamba` does).
    cli_args = argparse.Namespace(output_path=str(plan.folder), process_with_media=False)
    results = simple_evaluate(model=lmm, cli_args=cli_args, model_args=",".join(f"{k}={v}" for k, v in args.items()),
                              tasks=list(plan.tasks), task_manager=manager, batch_size=plan.batch_size,
                              limit=plan.limit, log_samples=plan.log_samples, random_seed=plan.seed,
                              numpy_random_seed=plan.seed, torch_random_seed=plan.seed, fewshot_random_seed=plan.seed)
    inputs = gather_input_reports(lmm)  # every process takes part
    if lmm.rank != 0:
        return None  # lmms-eval gathered this process's results on rank 0, which writes them
    if results is None:
        raise RuntimeError("lmms-eval returned no results on rank 0")
    samples = results.pop("samples", None)
    # how many requests went past the model's positions (warned once during the run), per task, over all processes
    results[RESULTS_KEY] = {**record, "inputs": inputs}
    for task, rows in (samples or {}).items():
        write_jsonl_atomic(plan.folder / f"{plan.stamp}_samples_{task}.jsonl", in_document_order(rows))
    out = write_json_atomic(plan.results_file, results, default=str)  # last: its presence = done
    log.info("wrote %s", out)
    return out


def gather_input_reports(lmm) -> dict[str, Any]:
    """The adapter's input report (:meth:`~mmmamba_bench.eval.adapter.MMMambaLMM.input_report`) summed over the
    processes of a data-parallel run (each saw only its shard of the requests); every process must call it."""
    report = lmm.input_report()
    if lmm.world_size == 1:
        return report
    import torch.distributed as dist

    reports: list[dict[str, Any] | None] = [None] * lmm.world_size
    dist.all_gather_object(reports, report)
    over: dict[str, int] = {}
    for r in reports:
        for task, n in (r or {}).get("over_position_limit", {}).items():
            over[task] = over.get(task, 0) + n
    return {"position_limit": report["position_limit"], "over_position_limit": dict(sorted(over.items()))}


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
        "world_size": lmm.world_size,  # processes that evaluated (data parallel), rank 0 writing
        "data": data_identity(task_names, data_dir, mini_data_dir=mini_data_dir),
        "packages": provenance.package_versions(),
        "project": provenance.project(),
    }
