"""``mmmamba-bench sweep``: build, evaluate and cost every configuration, resumably; then the report.

For each :class:`~mmmamba_bench.sweep.configs.SweepConfig`, in ``OUT/configs/<name>/``, the steps a user would run by
hand, as the same library calls:

1. the model: :func:`mmmamba_bench.train.distill.distill` (seed + the configuration's stages, exactly what
   ``mmmamba-bench distill`` runs) into ``model/`` (its intermediate stages in ``model.stages/``); a seeded-only
   configuration is :func:`mmmamba_bench.seeding.convert`; an all-attention one is the teacher itself;
2. :func:`mmmamba_bench.eval.runner.run_eval` with per-sample logs into ``eval/<name>/``;
3. the cost (:mod:`mmmamba_bench.sweep.cost`) into ``cost.json`` (measured: the profiler's rows in
   ``profile.json``);
4. ``done.json``, written last: the configuration is complete and is never redone.

Every step writes its output atomically and is skipped when that output exists, so an interrupted sweep resumes with
the same command: finished configurations are skipped whole, a distillation resumes mid-stage (distill's own resume),
an evaluation or cost step cut short runs again. ``OUT/sweep.json`` (rewritten after every step) records the
settings with the hashes that determine the results (teacher weights, recipe, data, tasks, ...), each
configuration's status, outputs and step times; a rerun with other settings is refused before any work, naming what
differs (execution settings such as the device, the evaluation batch size or the report's context may change).
``configs/<name>/config.json`` (written first) pins what each name means.

All checks run before the first step (:func:`prepare`): the teacher checkpoint, the recipe, the layouts against the
teacher's depth, the tasks and their data, the cost mode and GPU, the output folder; one sweep at a time writes an
``OUT`` (:func:`mmmamba_bench.outputs.output_lock`).

For reuse (e.g. a placement search): :func:`prepare` once, then :func:`run_config` per configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmmamba_bench.results import write_json_atomic
from mmmamba_bench.sweep.configs import SweepConfig, check_names
from mmmamba_bench.sweep.cost import MEASURED, MODELLED, GpuSpec
from mmmamba_bench.sweep.paths import ConfigPaths, config_paths, read_done, results_file

log = logging.getLogger(__name__)

SCHEMA = "mmmamba-bench/sweep/v1"
MANIFEST = "sweep.json"
DEFAULT_CONTEXTS = (1024, 16 * 1024, 103 * 1024)  # 1K, 16K, 103K (the paper's Fig. 1 comparison context)
DEFAULT_GPU = "rtx4090"  # the paper's Fig. 1 GPU
PAPER_CONTEXT = 103 * 1024


class SweepSettingsError(ValueError):
    """A sweep folder that holds a sweep with other settings, or a configuration name that means another one."""


@dataclass(frozen=True)
class SweepSettings:
    """What every configuration of a sweep shares (the command line's flags)."""

    teacher: Path
    recipe: Any  # DistillRecipe, a recipe file or a dict (as distill() takes it)
    tasks: str  # lmms-eval tasks: "mini", "paper", or a comma list
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    report_context: int | None = None  # the report's cost context (default 103K if swept, else the largest)
    cost: str = "auto"  # auto | measured | modelled
    gpu: str | None = None  # modelled cost: a key of sweep.cost.GPUS (default rtx4090)
    max_steps: int | None = None  # cap on every distillation stage's steps
    data: Path | None = None  # training data (distill --data)
    image_root: Path | None = None
    mini_data: Path | None = None  # the mini-suite the mini tasks read (default: --data for mini-suite recipes)
    data_dir: Path | None = None  # local copies of the real benchmarks (eval --data-dir)
    limit: int | None = None  # documents per task (rounded up to whole clusters)
    device: str | None = None  # distillation and evaluation device (default: the recipe's / cuda if available)
    batch_size: int = 8  # evaluation batch size
    eval_seed: int = 0
    resamples: int = 2000  # bootstrap resamples in the report
    profile_steps: int = 20  # measured cost: timed decode steps per context
    profile_impl: str = "auto"  # measured cost: the decode step's kernels (auto | triton | torch)
    progress: bool = True


@dataclass
class SweepPlan:
    """A checked sweep, ready to run: the settings resolved and the identities that a resume must match."""

    settings: SweepSettings
    recipe: Any  # DistillRecipe
    teacher_config: Any  # ChatConfig
    teacher_sha256: str
    tasks: list[str]
    mini_data: Path | None
    cost_mode: str  # MEASURED | MODELLED
    gpu: GpuSpec | None
    report_context: int
    identity: dict[str, Any] = field(default_factory=dict)  # what determines the results (sweep.json "settings")

    @property
    def identity_sha256(self) -> str:
        return _sha256(self.identity)


def _sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---- checks before any work ---------------------------------------------------------------------------------------

def prepare(configs: Sequence[SweepConfig], settings: SweepSettings) -> SweepPlan:
    """Check everything a sweep reads before it starts; raises with the flag or file named."""
    from mmmamba_bench import preflight
    from mmmamba_bench.benchmarks import MINI_TASKS, resolve_tasks
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.eval.tasks import check_tasks, cluster_limit
    from mmmamba_bench.sweep.cost import gpu_spec, resolve_mode
    from mmmamba_bench.sweep.quality import aggregations, check_quality_tasks, column_values
    from mmmamba_bench.train.recipe import DistillRecipe, as_recipe, cap_distill_steps, recipe_hash
    from mmmamba_bench.train.state import weights_sha256

    check_names(list(configs))
    if not configs:
        raise ValueError("a sweep needs at least one configuration (--layouts or --preset)")
    teacher = Path(settings.teacher)
    if not (teacher / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {teacher}: no config.json (not a checkpoint directory)")
    teacher_config = ChatConfig.from_json_file(teacher / "config.json")
    for cfg in configs:
        if len(cfg.block_types) != teacher_config.num_layers:
            raise ValueError(f"configuration {cfg.name}: {len(cfg.block_types)} layers, but the teacher {teacher} "
                             f"has {teacher_config.num_layers}")
    recipe = as_recipe(settings.recipe, DistillRecipe)
    capped = cap_distill_steps(recipe, settings.max_steps) if settings.max_steps is not None else recipe
    tasks = resolve_tasks(settings.tasks)
    check_quality_tasks(tasks)
    limit = cluster_limit(tasks, settings.limit)
    if not settings.contexts or any(c < 1 for c in settings.contexts):
        raise ValueError(f"--contexts must list positive context lengths, got {settings.contexts}")
    report_context = settings.report_context or (PAPER_CONTEXT if PAPER_CONTEXT in settings.contexts
                                                 else max(settings.contexts))
    if report_context not in settings.contexts:
        raise ValueError(f"--report-context {report_context} is not one of --contexts {list(settings.contexts)}")
    mode = resolve_mode(settings.cost, settings.device)
    if mode == MEASURED and settings.gpu is not None:
        raise ValueError(f"--gpu {settings.gpu} names the GPU of a modelled cost; --cost measured measures this "
                         f"machine's GPU (pass --cost modelled to model a {settings.gpu})")
    if mode == MEASURED:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--cost measured needs a CUDA GPU (none is visible here); use --cost modelled --gpu NAME")
    gpu = gpu_spec(settings.gpu or DEFAULT_GPU) if mode == MODELLED else None
    # the training data and the mini-suite the evaluation reads
    mini = settings.mini_data
    if mini is None and recipe.data.source == "minisuite" and settings.data is not None:
        mini = Path(settings.data)
    data_identity: dict[str, Any] = {"source": recipe.data.source,
                                     "path": None if settings.data is None else str(settings.data)}
    if any(c.build == "distilled" for c in configs):
        if recipe.data.source == "minisuite":
            from mmmamba_bench.train.data import data_sha256

            try:
                data_identity["sha256"] = data_sha256(settings.data)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"--data: {exc}") from None
        elif settings.data is None or not Path(settings.data).is_file():
            raise FileNotFoundError(f"--data: the recipe reads InternVL-format data (data.source: internvl); pass "
                                    f"a .jsonl file or meta JSON (got {settings.data})")
    needs = [*preflight.evaluation_needs(), *preflight.REPORT]
    if any(t in MINI_TASKS for t in tasks):
        from mmmamba_bench.assets import default_mini_data_dir
        from mmmamba_bench.data import minisuite

        mini_dir = mini if mini is not None else default_mini_data_dir()
        if not minisuite.suite_present(mini_dir):
            preflight.check(preflight.DATA_GENERATION)
            minisuite.ensure_suite(mini_dir)  # as `mmmamba-bench eval` would on its first use
    preflight.check(needs, checkpoints=[teacher])
    check_tasks(tasks, settings.data_dir, mini_data_dir=mini)
    column_values(check_quality_tasks(tasks), aggregations(tasks))  # the report can score every task from samples
    plan = SweepPlan(settings, recipe, teacher_config, weights_sha256(teacher), tasks, mini, mode, gpu,
                     report_context)
    plan.identity = {
        "teacher_sha256": plan.teacher_sha256, "recipe_sha256": recipe_hash(capped), "max_steps": settings.max_steps,
        "data": data_identity, "tasks": tasks, "limit": limit, "eval_seed": settings.eval_seed,
        "contexts": list(settings.contexts), "cost": mode, "gpu": None if gpu is None else dataclasses.asdict(gpu),
    }
    return plan


# ---- the manifest -----------------------------------------------------------------------------------------------

class Manifest:
    """``OUT/sweep.json``: the settings' identity, the configurations, their status, outputs and step times."""

    def __init__(self, path: Path, plan: SweepPlan):
        self.path = path
        self.data = open_manifest(path, plan, SCHEMA, {"configs": {}, "runs": []}, "a sweep", SweepSettingsError)

    def start_run(self, configs: Sequence[SweepConfig], settings: SweepSettings) -> None:
        self.data["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "configs": [c.name for c in configs], "device": settings.device,
                                  "pid": os.getpid()})
        for cfg in configs:
            entry = self.data["configs"].setdefault(cfg.name, {"status": "pending", "seconds": {}})
            entry["config"] = cfg.to_dict()
        self.write()

    def update(self, name: str, **fields: Any) -> None:
        entry = self.data["configs"][name]
        seconds = fields.pop("seconds", None)
        if seconds:
            entry.setdefault("seconds", {}).update(seconds)
        entry.update(fields)
        self.write()

    def finish_run(self, seconds: float) -> None:
        self.data["runs"][-1]["seconds"] = round(seconds, 1)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.data)


def open_manifest(path: Path, plan: Any, schema: str, records: dict[str, Any], what: str,
                  error: type[Exception]) -> dict[str, Any]:
    """A sweep's or placement search's manifest data: the settings' identity (``plan``: a :class:`SweepPlan` or a
    placement plan) and ``records``' keys, those taken over from the file at ``path`` when it was written under the
    same settings; a file of other settings is ``error``, naming the settings that differ."""
    data: dict[str, Any] = {"schema": schema, "settings": plan.identity, "settings_sha256": plan.identity_sha256,
                            "teacher": str(plan.settings.teacher), "recipe": recipe_source(plan.settings.recipe),
                            **records}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings_sha256") != plan.identity_sha256:
            before = old.get("settings", {})
            diff = sorted(k for k in set(before) | set(plan.identity) if before.get(k) != plan.identity.get(k))
            raise error(f"{path.parent} holds {what} with other settings ({', '.join(diff)} differ); rerun with the "
                        f"same settings to resume, or choose another --out")
        data.update({key: old.get(key, empty) for key, empty in records.items()})
    return data


def recipe_source(recipe: Any) -> str:
    """How a manifest names the recipe: its path, or the type of an in-memory recipe."""
    return str(recipe) if isinstance(recipe, (str, os.PathLike)) else type(recipe).__name__


# ---- one configuration ------------------------------------------------------------------------------------------

def _rel(path: Path, out: Path) -> str:
    """``path`` relative to the sweep folder when inside it (a sweep folder may move), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def _pin_config(paths: ConfigPaths, cfg: SweepConfig, plan: SweepPlan) -> str:
    """Write (or check) ``config.json``: the name means this configuration under these settings."""
    pin = {"config": cfg.identity(), "settings_sha256": plan.identity_sha256}
    key = _sha256(pin)
    if paths.config.is_file():
        old = json.loads(paths.config.read_text())
        if old.get("key") != key:
            raise SweepSettingsError(f"{paths.folder} holds configuration {cfg.name!r} as {old.get('config')} "
                                     f"(settings {str(old.get('settings_sha256'))[:12]}...), not {cfg.identity()} "
                                     f"(settings {plan.identity_sha256[:12]}...); choose another --out")
    else:
        write_json_atomic(paths.config, {**pin, "key": key, "paper": [dataclasses.asdict(r) for r in cfg.paper]})
    return key


def run_config(cfg: SweepConfig, plan: SweepPlan, out: Path,
               on_step: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build, evaluate and cost ``cfg`` in ``out/configs/<name>/`` (each step skipped when its output exists);
    returns the ``done.json`` record. ``on_step(name, fields)`` is told of every finished step (the manifest)."""
    paths = config_paths(out, cfg)
    key = _pin_config(paths, cfg, plan)
    done = read_done(paths)
    if done is not None and done.get("key") == key:
        log.info("%s: complete already (%s)", cfg.name, paths.done)
        return done
    timings: dict[str, float] = json.loads(paths.timings.read_text()) if paths.timings.is_file() else {}

    def step(name: str, run: Callable[[], Any], fields: Callable[[Any], dict[str, Any]]) -> Any:
        """Run one step; its seconds add up over the runs it took (an interrupted attempt counts too)."""
        log.info("%s: %s ...", cfg.name, name)
        t0 = time.perf_counter()
        try:
            result = run()
        finally:
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)
            write_json_atomic(paths.timings, timings)
        if on_step is not None:
            on_step(name, {"seconds": {name: timings[name]}, **fields(result)})
        return result

    model = _model_step(cfg, plan, paths, step)
    found = results_file(paths.eval, cfg.name)
    if found is None:
        found = step("eval", lambda: _evaluate(cfg, plan, model, paths),
                     lambda r: {"results_file": _rel(r, out)})
    cost_file = paths.cost
    if not cost_file.is_file():
        step("cost", lambda: write_json_atomic(cost_file, _cost(cfg, plan, model, paths).to_dict()),
             lambda r: {"cost_file": _rel(cost_file, out)})
    from mmmamba_bench.train.state import weights_sha256

    record = {"key": key, "config": cfg.to_dict(), "settings_sha256": plan.identity_sha256,
              "model": _rel(model, out), "model_weights_sha256": weights_sha256(model),
              "results_file": _rel(found, out), "cost_file": _rel(cost_file, out), "seconds": timings,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(paths.done, record)
    return record


def _model_step(cfg: SweepConfig, plan: SweepPlan, paths: ConfigPaths, step) -> Path:
    """The model to evaluate: the teacher, the seeded student, or the distilled one (built unless finished)."""
    from mmmamba_bench.train.state import read_stage_record

    s = plan.settings
    if cfg.build == "teacher":
        return Path(s.teacher)
    if cfg.build == "seeded":
        if not paths.model.is_dir():
            from mmmamba_bench.seeding import convert

            step("seed", lambda: convert(s.teacher, paths.model, layout=cfg.layout, init=cfg.init,
                                         seed=plan.recipe.seed), lambda r: {})
        return paths.model
    record = read_stage_record(paths.model) if paths.model.is_dir() else None
    if record is None or not record.get("complete"):
        from mmmamba_bench.train import distill as distill_module  # the module: tests wrap its distill()

        recipe = dataclasses.replace(plan.recipe, layout=cfg.layout, init=cfg.init)
        step("distill", lambda: distill_module.distill(recipe, s.teacher, paths.model, stages=cfg.stages,
                                                       data_dir=s.data, image_root=s.image_root,
                                                       allow_skip=cfg.allow_skip, device=s.device,
                                                       progress=s.progress, max_steps=s.max_steps),
             lambda r: {})
    return paths.model


def _evaluate(cfg: SweepConfig, plan: SweepPlan, model: Path, paths: ConfigPaths) -> Path:
    from mmmamba_bench.eval.runner import run_eval

    s = plan.settings
    out = run_eval(model, ",".join(plan.tasks), paths.eval, label=cfg.name, device=s.device, dtype="auto",
                   batch_size=s.batch_size, limit=s.limit, data_dir=s.data_dir, log_samples=True, seed=s.eval_seed,
                   mini_data_dir=plan.mini_data)
    if out is None:
        raise RuntimeError(f"{cfg.name}: the evaluation wrote no results file")
    return out


def _cost(cfg: SweepConfig, plan: SweepPlan, model: Path, paths: ConfigPaths):
    from mmmamba_bench.sweep.cost import measured_cost, modelled_cost

    s = plan.settings
    if plan.cost_mode == MODELLED:
        return modelled_cost(plan.teacher_config.with_block_types(list(cfg.block_types)), s.contexts, plan.gpu)
    return measured_cost(model, s.contexts, paths.profile, steps=s.profile_steps, device=s.device or "cuda",
                         impl=s.profile_impl)


# ---- the whole sweep ---------------------------------------------------------------------------------------------

def run_sweep(configs: Sequence[SweepConfig], settings: SweepSettings, out: str | os.PathLike) -> Path:
    """Run (or resume) the sweep into ``out`` and write its report; returns ``out/report.md``."""
    from mmmamba_bench.outputs import check_output_dir, output_lock
    from mmmamba_bench.sweep.report import write_report

    out = check_output_dir(out, "--out")
    plan = prepare(configs, settings)
    t0 = time.perf_counter()
    with output_lock(out, "sweep"):
        manifest = Manifest(out / MANIFEST, plan)
        manifest.start_run(configs, settings)
        for i, cfg in enumerate(configs, 1):
            log.info("configuration %d/%d: %s (%s, attention at %s, init %s, stages %s)", i, len(configs), cfg.name,
                     cfg.build, list(cfg.attention_layers) or "none", cfg.init, cfg.stages_label)
            manifest.update(cfg.name, status="running")
            try:
                record = run_config(cfg, plan, out, on_step=lambda name, fields, n=cfg.name: manifest.update(
                    n, **fields))
            except BaseException:
                manifest.update(cfg.name, status="interrupted")
                raise
            manifest.update(cfg.name, status="done", done=str(config_paths(out, cfg).done),
                            model_weights_sha256=record["model_weights_sha256"])
        report = write_report(configs, plan, out)
        manifest.finish_run(time.perf_counter() - t0)
    return report
