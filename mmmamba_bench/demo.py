"""``mmmamba-bench demo``: the whole harness, offline, on the embedded default; ``--smoke``: the same chain, tiny.

It chains the library calls a researcher makes on real checkpoints, only on a tiny HoVLE-architecture teacher
trained on the offline mini-suite:

    preflight -> data -> [train-teacher] -> convert (seeded, undistilled)
              -> distill linear | distill hybrid | eval teacher, seeded (side by side, lmms-eval)
              -> eval linear, hybrid -> profile -> report

The teacher is by default the embedded one (``models/demo-teacher/``, card ``models/demo-teacher.yaml``): trained by
``mmmamba-bench train-teacher --recipe distill/teacher-demo.yaml`` (11,000 steps: minutes on a GPU, about an hour
on 2 CPU cores). ``teacher="train"`` retrains it with that recipe as the chain's second step.

The smoke chain (:data:`SMOKE`) runs exactly the same steps with a smaller :class:`Budget` (a few training
steps per stage, a few documents per task, tiny contexts): CI runs it so that a step that cannot run never lands.
The full chain is :data:`FULL`; the two differ in nothing but their budgets.

Before any step, :func:`preflight` checks in seconds that everything the later steps import and read works
(lmms-eval's evaluator and what it imports when called, datasets, the report's libraries, the recipes, the teacher
checkpoint, the mini-suite if present). Each step writes its output atomically and is skipped when that output
already exists, so an interrupted demo resumes where it stopped (``fresh=True`` starts over). A step's error is not
caught: it reaches the caller as raised.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from mmmamba_bench.assets import recipes_dir
from mmmamba_bench.results import write_json_atomic

log = logging.getLogger(__name__)

MODELS = ("teacher", "seeded-linear", "linear", "hybrid")
EMBEDDED_TEACHER = "demo-teacher"  # model card of the teacher shipped in the repository
TEACHER_MODES = ("embedded", "train")
TITLE = "mmmamba-bench demo (offline mini-suite)"


@dataclass(frozen=True)
class Budget:
    """How much each step of the chain does; everything else (steps, recipes, models, settings) is shared."""

    name: str
    distill_max_steps: int | None  # cap on each distillation stage's steps (None: the recipes' own)
    teacher_max_steps: int | None  # cap on the teacher's training steps (``teacher="train"`` only)
    eval_limit: int | None  # documents per mini task (None: all; rounded up to whole scoring clusters)
    profile_contexts: tuple[int, ...]  # prompt lengths the profiler decodes after
    profile_steps: int  # timed decode steps per context
    profile_warmup: int


FULL = Budget("full", distill_max_steps=None, teacher_max_steps=None, eval_limit=None,
              profile_contexts=(128, 256, 512, 1024), profile_steps=20, profile_warmup=10)
SMOKE = Budget("smoke", distill_max_steps=2, teacher_max_steps=2, eval_limit=4,
               profile_contexts=(32, 64), profile_steps=2, profile_warmup=1)
BUDGETS = {b.name: b for b in (FULL, SMOKE)}


@dataclass
class Step:
    name: str
    run: Callable[..., object]
    output: Path  # written atomically by the step; the step is skipped when it exists
    # Consecutive steps of one group are independent of each other: with the cores for it they run side by side in
    # worker processes, ``run(max_threads=N, progress=False)`` each (``run`` must then be picklable).
    group: str | None = None


def embedded_teacher() -> Path:
    from mmmamba_bench.cards import resolve_model

    return resolve_model(EMBEDDED_TEACHER)


def default_out(budget: Budget) -> Path:
    """``demo_out`` for the full chain, ``demo_smoke`` for the smoke chain: a smoke run never touches a full one."""
    return Path("demo_out" if budget is FULL else f"demo_{budget.name}")


def default_data_dir(out: Path, budget: Budget) -> Path:
    """The mini-suite folder: the shared default for the full chain; inside ``out`` for the smoke chain, so that
    its data step always runs and writes nowhere else."""
    from mmmamba_bench.assets import default_mini_data_dir

    return default_mini_data_dir() if budget is FULL else out / "data"


def _results_file(folder: Path) -> Path:
    """The newest ``*_results.json`` in ``folder`` (written last by an evaluation), or ``folder/*_results.json``
    (which does not exist) when there is none."""
    found = sorted(folder.glob("*_results.json"))
    return found[-1] if found else folder / "*_results.json"


def plan(out: Path, data_dir: Path, teacher: str = "embedded", budget: Budget = FULL) -> list[Step]:
    """The chain's steps, in order, as library calls with ``budget``'s sizes (nothing runs here)."""
    from mmmamba_bench.data.minisuite import generate
    from mmmamba_bench.report import build_report
    from mmmamba_bench.seeding import convert
    from mmmamba_bench.train.data import EncodedCache
    from mmmamba_bench.train.distill import distill
    from mmmamba_bench.train.teacher import train_teacher

    if teacher not in TEACHER_MODES:
        raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {teacher!r}")
    m = {name: out / "models" / name for name in MODELS}
    results, profile = out / "results", out / "profile.json"
    encoded = EncodedCache()  # run one after the other, the two students share the encoded training data
    steps = [Step("data", partial(generate, data_dir), data_dir / "manifest.json")]
    if teacher == "embedded":
        m["teacher"] = embedded_teacher()
    else:
        steps.append(Step("train-teacher", partial(train_teacher, recipes_dir() / "teacher-demo.yaml", data_dir,
                                                   m["teacher"], max_steps=budget.teacher_max_steps), m["teacher"]))
    steps.append(Step("convert", partial(convert, m["teacher"], m["seeded-linear"], layout="linear", init="mimic",
                                         seed=0), m["seeded-linear"]))
    for layout in ("linear", "hybrid"):
        steps.append(Step(f"distill-{layout}", partial(distill, recipes_dir() / f"{layout}-demo.yaml", m["teacher"],
                                                       m[layout], data_dir=data_dir, encoded=encoded,
                                                       max_steps=budget.distill_max_steps),
                          m[layout], group="distill"))
    # The teacher and the seeded student are scored beside the distillations (a worker freed by the shorter one takes
    # them: the pool runs steps in this order); the distilled students after them.
    for name in MODELS:
        steps.append(Step(f"eval-{name}", partial(_evaluate, m[name], name, results, budget, data_dir),
                          _results_file(results / name), group="distill" if name in ("teacher", "seeded-linear")
                          else None))
    steps.sort(key=lambda s: s.name in ("eval-linear", "eval-hybrid"))  # stable: only those two move after
    steps.append(Step("profile", partial(_profile, [m[n] for n in ("teacher", "linear", "hybrid")], profile, budget),
                      profile))
    steps.append(Step("report", partial(build_report, [results], [profile], [], out / "report", title=TITLE),
                      out / "report" / "report.md"))
    return steps


def _evaluate(model: Path, name: str, results: Path, budget: Budget, data_dir: Path, *, max_threads: int | None = None,
              progress: bool = True) -> Path:
    """``run_eval`` of one demo model on the mini-suite (``max_threads``: torch's threads, in a worker)."""
    import torch

    from mmmamba_bench.eval.runner import run_eval

    if max_threads is not None:
        torch.set_num_threads(max_threads)
    return run_eval(model, "mini", results, label=name, device="cpu", dtype="float32", batch_size=32,
                    limit=budget.eval_limit, mini_data_dir=data_dir)


def _profile(models: list[Path], out: Path, budget: Budget) -> None:
    """Profile into a temporary name, renamed when every context is done (the profiler rewrites its file after each
    context, so ``out`` existing means complete)."""
    import torch

    from mmmamba_bench.profiler.commands import run_profile

    partial = out.with_name(f".{out.name}.partial")
    run_profile([str(p) for p in models], list(budget.profile_contexts), ["optimized"], partial,
                torch.device("cpu"), torch.float32, steps=budget.profile_steps, warmup=budget.profile_warmup)
    partial.replace(out)


def preflight(out: Path, data_dir: Path, teacher: str) -> None:
    """Everything the chain's steps import and read, checked before the first one runs
    (:mod:`mmmamba_bench.preflight`): lmms-eval's evaluator and its call-time imports, datasets, tokenizers,
    transformers, the data generator's and the report's libraries; the recipes; the embedded teacher's config,
    weight headers and tokenizer; the mini-suite when one is present; the output folder."""
    from mmmamba_bench import preflight as pf
    from mmmamba_bench.data.minisuite import suite_present
    from mmmamba_bench.eval.tasks import MINI_TASKS, check_tasks
    from mmmamba_bench.train.recipe import DistillRecipe, TeacherRecipe, load_recipe

    pf.check([*pf.evaluation_needs(), *pf.DATA_GENERATION, *pf.REPORT],
             checkpoints=[embedded_teacher()] if teacher == "embedded" else [])
    for layout in ("linear", "hybrid"):
        load_recipe(recipes_dir() / f"{layout}-demo.yaml", DistillRecipe)
    if teacher == "train":
        load_recipe(recipes_dir() / "teacher-demo.yaml", TeacherRecipe)
    if suite_present(data_dir):
        check_tasks(MINI_TASKS, mini_data_dir=data_dir)  # a present but broken suite: now, not after distillation
    out.mkdir(parents=True, exist_ok=True)


def check_teacher_data(teacher_dir: Path, data_dir: Path) -> None:
    """Warn when the teacher's record names other mini-suite data than ``data_dir`` holds (e.g. other Pillow /
    scikit-image versions re-encoding the images): its scores may then differ from the recorded ones."""
    from mmmamba_bench.data.minisuite import MANIFEST, sha256_file
    from mmmamba_bench.train.state import read_stage_record

    want = (read_stage_record(teacher_dir) or {}).get("data_manifest_sha256")
    have = sha256_file(data_dir / MANIFEST) if (data_dir / MANIFEST).is_file() else None
    if want and have != want:
        log.warning("the teacher in %s was trained on mini-suite data with manifest sha256 %s..., but %s has %s... "
                    "(other package versions?); its scores may differ from its record. `mmmamba-bench demo "
                    "--teacher train` retrains it on this data.", teacher_dir, want[:12], data_dir / MANIFEST,
                    str(have)[:12])


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def batches(steps: list[Step]) -> list[list[Step]]:
    """``steps`` in order, consecutive steps of one group together (every other step alone)."""
    out: list[list[Step]] = []
    for step in steps:
        if out and step.group is not None and out[-1][0].group == step.group:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def _init_worker(log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_side_by_side(steps: list[Step], cores: int) -> dict[str, float]:
    """Run independent steps at once, one worker process each, the cores split among them (at least one thread
    each); returns each step's seconds. Every step runs to its end; then the first failure is raised as the step
    raised it (the others' outputs are kept, so a rerun resumes after them)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = max(1, min(len(steps), cores))  # steps beyond the cores wait for a free worker, in order
    threads = max(1, cores // workers)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    failures: list[tuple[Step, BaseException]] = []
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state (threads, locks) copied by fork
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(logging.getLogger().getEffectiveLevel(),)) as pool:
        futures = {pool.submit(partial(step.run, max_threads=threads, progress=False)): step for step in steps}
        for future in as_completed(futures):
            step = futures[future]
            seconds[step.name] = round(time.perf_counter() - t0, 1)
            if future.exception() is not None:
                failures.append((step, future.exception()))
            else:
                _say(f"{step.name}: done ({seconds[step.name]} s)")
    if failures:
        step, exc = failures[0]
        _failed(step, seconds[step.name])
        raise exc
    return seconds


def _failed(step: Step, seconds: float) -> None:
    print(f"[demo] step {step.name!r} failed after {seconds:.0f} s; rerun the same command to resume from it",
          file=sys.stderr, flush=True)


def run_demo(out: Path | None = None, data_dir: Path | None = None, fresh: bool = False, teacher: str = "embedded",
             budget: Budget = FULL) -> Path:
    """Run (or resume) the chain into ``out`` (default :func:`default_out`); returns the report's path.

    ``out/demo_settings.json`` records the teacher mode and the budget; resuming a folder made with other settings
    is refused. ``out/timings.json`` records each step's seconds. Steps of one group (the two distillations, then the
    teacher's and the seeded student's evaluations) run side by side in as many worker processes as there are cores,
    at most one per step (:func:`run_side_by_side`).
    """
    out = Path(out) if out is not None else default_out(budget)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir(out, budget)
    if teacher not in TEACHER_MODES:
        raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {teacher!r}")
    settings = {"teacher": teacher, "budget": budget.name}
    settings_file = out / "demo_settings.json"
    if not fresh and settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise RuntimeError(f"{out} holds a demo run with other settings ({settings_file.read_text().strip()}, this "
                           f"run: {json.dumps(settings)}); rerun with --fresh or choose another --out")
    t_all = time.perf_counter()
    preflight(out, data_dir, teacher)
    preflight_s = round(time.perf_counter() - t_all, 1)
    _say(f"preflight: everything the steps need imports and reads ({preflight_s} s)")
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_file, settings)
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    timings["preflight"] = preflight_s
    cores = available_cores()
    for batch in batches(plan(out, data_dir, teacher, budget)):
        if batch[0].name == "convert" and teacher == "embedded":
            check_teacher_data(embedded_teacher(), data_dir)
        for step in batch:
            if step.output.exists():
                _say(f"{step.name}: done already ({step.output})")
        pending = [step for step in batch if not step.output.exists()]
        if len(pending) > 1 and cores >= 2:
            workers = min(len(pending), cores)
            _say(f"{', '.join(s.name for s in pending)}: side by side in {workers} workers, "
                 f"{max(1, cores // workers)} thread(s) each ...")
            t0 = time.perf_counter()
            try:
                timings.update(run_side_by_side(pending, cores))
            finally:
                timings[f"{pending[0].group} (side by side)"] = round(time.perf_counter() - t0, 1)
                write_json_atomic(timings_file, timings)
            continue
        for step in pending:
            _say(f"{step.name} ...")
            t0 = time.perf_counter()
            try:
                step.run()
            except BaseException:
                _failed(step, time.perf_counter() - t0)
                raise
            timings[step.name] = round(time.perf_counter() - t0, 1)
            write_json_atomic(timings_file, timings)
    report = out / "report" / "report.md"
    _say(f"finished in {time.perf_counter() - t_all:.0f} s this run; report: {report}")
    return report
