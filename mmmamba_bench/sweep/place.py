"""``mmmamba-bench place``: search where a hybrid's attention layers should go, with the uncertainty of the ranking.

For each candidate layer i and each of several seeds, a student that keeps only layer i as attention (the rest
Mamba-2) is distilled by a short stage 3, and so is the all-linear student with the same seed
(:mod:`mmmamba_bench.sweep.utility`); layer i's utility is the held-out KL it removes, with a Student-t interval over
seeds and the seed bootstrap's frequency of each layer being proposed (:mod:`mmmamba_bench.sweep.ranking`). The
budget (K layers, or a decode latency / memory at a context, :mod:`mmmamba_bench.sweep.budget`) turns utilities and
each layer's cost (:mod:`mmmamba_bench.sweep.cost`: measured by the profiler on a CUDA GPU, else modelled from the
bandwidth floor for a named GPU, labelled) into a proposed layout, reported beside the paper's head-interleaved layout
with the same number of attention layers. ``evaluate``: the sweep (:func:`mmmamba_bench.sweep.runner.run_sweep`)
then distils both layouts with the full recipe and scores them (``OUT/evaluate/``), and their paired quality
difference is reported.

Outputs in ``OUT``: ``place.json`` and ``place.md`` (:mod:`mmmamba_bench.sweep.place_report`), ``search.json``
(the settings' identity and every run's status and time), ``runs/<layout>/seed<s>/done.json`` per finished run,
``costs/`` (measured costs), ``evaluate/`` (the sweep).

Resuming: the same command continues where an interrupted search stopped and never redoes a finished run. What
determines a run's result (teacher weights, recipe, stage-3 steps, training and held-out data) must match the folder's
``search.json``, else the search is refused before any work, naming what differs; the budget, the context, the cost
source, more seeds or other candidate layers only change which runs exist and how they are ranked, so they may change
between invocations (finished runs are reused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmmamba_bench.results import write_json_atomic
from mmmamba_bench.sweep.budget import Budget, LayerCosts
from mmmamba_bench.sweep.cost import MEASURED, MODELLED, CostRow, GpuSpec
from mmmamba_bench.sweep.place_report import SCHEMA, analyse, write_place
from mmmamba_bench.sweep.runner import PAPER_CONTEXT, SweepPlan, SweepSettings, open_manifest

log = logging.getLogger(__name__)

MANIFEST = "search.json"
EVALUATE_DIR = "evaluate"


class PlaceSettingsError(ValueError):
    """A search folder that holds a search with other settings, or settings that cannot run."""


@dataclass(frozen=True)
class PlaceSettings:
    """The command line's flags (``mmmamba-bench place``)."""

    teacher: Path
    recipe: Any  # DistillRecipe, a recipe file or a dict (its layout and seed are set per run)
    budget: str  # K | <ms>ms | a memory size (sweep.budget)
    seeds: int = 3  # seeds recipe.seed, recipe.seed + 1, ...
    steps: int = 50  # stage-3 steps of each run (a cap on the recipe's stage 3)
    layers: tuple[int, ...] | None = None  # candidate layers (default: every global layer)
    heldout: int = 128  # held-out rows the KL is measured on
    heldout_data: Path | None = None  # InternVL recipes: the held-out rows (mini-suite: the validation split)
    context: int = PAPER_CONTEXT  # the context of the costs and of a cost budget
    cost: str = "auto"  # auto | measured | modelled
    gpu: str | None = None  # modelled cost: a key of sweep.cost.GPUS (default rtx4090)
    data: Path | None = None  # training data (distill --data)
    image_root: Path | None = None
    device: str | None = None
    keep_models: bool = False  # keep every run's student (default: removed once its result is recorded)
    resamples: int = 4000  # seed-bootstrap draws for the selection frequencies
    progress: bool = True
    evaluate: SweepSettings | None = None  # distil + evaluate the proposal and head-interleaved with the sweep


@dataclass
class PlacePlan:
    """A checked search: settings resolved, the runs' identity, the costs when modelled."""

    settings: PlaceSettings
    recipe: Any  # DistillRecipe
    teacher_config: Any  # ChatConfig
    teacher_sha256: str
    budget: Budget
    candidates: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int  # the stage-3 steps each run trains
    cost_mode: str  # MEASURED | MODELLED
    gpu: GpuSpec | None
    identity: dict[str, Any] = field(default_factory=dict)  # what determines every run's result
    costs: LayerCosts | None = None  # modelled: computed in prepare(); measured: in run_place()
    eval_plan: SweepPlan | None = None

    @property
    def identity_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def num_layers(self) -> int:
        return self.teacher_config.num_layers


# ---- checks before any work ---------------------------------------------------------------------------------------

def prepare(settings: PlaceSettings) -> PlacePlan:
    """Check everything the search reads before it starts; raises with the flag or file named."""
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.sweep.budget import check_budget, check_reachable, parse_budget
    from mmmamba_bench.sweep.cost import gpu_spec, resolve_mode
    from mmmamba_bench.sweep.utility import heldout_identity
    from mmmamba_bench.train.recipe import DistillRecipe, as_recipe, recipe_hash
    from mmmamba_bench.train.state import weights_sha256

    teacher = Path(settings.teacher)
    if not (teacher / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {teacher}: no config.json (not a checkpoint directory)")
    config = ChatConfig.from_json_file(teacher / "config.json")
    if "mamba2" in config.block_types:
        mamba = [i for i, t in enumerate(config.block_types) if t != "mha"]
        raise PlaceSettingsError(f"--teacher {teacher}: layers {mamba} are Mamba-2 already; the search starts from "
                                 f"an all-attention teacher")
    n = config.num_layers
    candidates = tuple(range(n)) if settings.layers is None else tuple(settings.layers)
    bad = [i for i in candidates if not 0 <= i < n]
    if not candidates or bad or len(set(candidates)) != len(candidates):
        raise PlaceSettingsError(f"--layers {list(candidates)}: need distinct global layer indices in 0..{n - 1}"
                                 + (f" ({bad} out of range)" if bad else ""))
    budget = parse_budget(settings.budget)
    check_budget(budget, candidates, n)
    if settings.seeds < 2:
        raise PlaceSettingsError(f"--seeds {settings.seeds}: the ranking's interval needs at least 2 seeds (default 3)")
    if settings.steps < 1 or settings.heldout < 1 or settings.resamples < 1:
        raise PlaceSettingsError(f"--steps, --heldout and resamples must be positive, got {settings.steps}, "
                                 f"{settings.heldout}, {settings.resamples}")
    if settings.context < 1:
        raise PlaceSettingsError(f"--context must be a positive number of tokens, got {settings.context}")
    mode = resolve_mode(settings.cost, settings.device)
    if mode == MEASURED and settings.gpu is not None:
        raise PlaceSettingsError(f"--gpu {settings.gpu} names the GPU of a modelled cost; --cost measured measures "
                                 f"this machine's GPU (pass --cost modelled to model a {settings.gpu})")
    if mode == MEASURED:
        import torch

        if not torch.cuda.is_available():
            raise PlaceSettingsError("--cost measured needs a CUDA GPU (none is visible here); use --cost modelled "
                                     "--gpu NAME")
    gpu = gpu_spec(settings.gpu or "rtx4090") if mode == MODELLED else None
    recipe = as_recipe(settings.recipe, DistillRecipe)
    steps = min(settings.steps, recipe.stage3.steps)
    data_identity = _data_identity(recipe, settings)
    heldout = heldout_identity(recipe, settings.heldout, data=settings.data, heldout_data=settings.heldout_data,
                               image_root=settings.image_root, teacher_dir=teacher)
    plan = PlacePlan(settings, recipe, config, weights_sha256(teacher), budget, candidates,
                     tuple(recipe.seed + k for k in range(settings.seeds)), steps, mode, gpu)
    plan.identity = {"teacher_sha256": plan.teacher_sha256,
                     "recipe_sha256": recipe_hash(dataclasses.replace(recipe, layout="linear", seed=0)),
                     "stage3_steps": steps, "data": data_identity, "heldout": heldout}
    if mode == MODELLED:
        plan.costs = layer_costs(plan, None)
        check_reachable(budget, plan.costs)
    if settings.evaluate is not None:
        plan.eval_plan = _prepare_evaluation(plan)
    return plan


def _data_identity(recipe, settings: PlaceSettings) -> dict[str, Any]:
    if recipe.data.source == "minisuite":
        from mmmamba_bench.train.data import data_sha256

        try:
            return {"source": "minisuite", "sha256": data_sha256(settings.data)}
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"--data: {exc}") from None
    if settings.data is None or not Path(settings.data).is_file():
        raise FileNotFoundError(f"--data: the recipe reads InternVL-format data (data.source: internvl); pass a "
                                f".jsonl file or meta JSON (got {settings.data})")
    return {"source": recipe.data.source, "path": str(settings.data)}  # distill checks the rows' sha256 per stage


def _prepare_evaluation(plan: PlacePlan) -> SweepPlan:
    """The evaluation sweep's checks (tasks, their data, the evaluation's cost), before the search starts."""
    from mmmamba_bench.sweep.configs import SweepConfig
    from mmmamba_bench.sweep.runner import prepare as prepare_sweep

    ev = plan.settings.evaluate
    if Path(ev.teacher) != Path(plan.settings.teacher):
        raise PlaceSettingsError(f"--evaluate: the sweep's teacher {ev.teacher} is not the search's "
                                 f"{plan.settings.teacher}")
    probe = SweepConfig("linear", "linear", ("mamba2",) * plan.num_layers, init=plan.recipe.init)
    return prepare_sweep([probe], ev)


# ---- costs ---------------------------------------------------------------------------------------------------------

def layout_cost(plan: PlacePlan, positions: Sequence[int], out: Path | None) -> tuple[CostRow, str, str]:
    """(cost at the search's context, its label, its note) of attention at ``positions``: the bandwidth floor for
    the plan's GPU, or measured by the profiler on a seeded checkpoint of the layout (kept in ``out/costs/``)."""
    from mmmamba_bench.sweep.configs import layout_name, layout_string
    from mmmamba_bench.sweep.cost import Cost, measured_cost, modelled_cost

    types = ["mha" if i in positions else "mamba2" for i in range(plan.num_layers)]
    context = plan.settings.context
    if plan.cost_mode == MODELLED:
        cost = modelled_cost(plan.teacher_config.with_block_types(types), [context], plan.gpu)
    else:
        layout = layout_string(tuple(positions), plan.num_layers)
        folder = Path(out) / "costs" / layout_name(layout, types)
        cached = folder / "cost.json"
        if cached.is_file():
            cost = Cost.from_dict(json.loads(cached.read_text()))
        else:
            from mmmamba_bench.seeding import convert

            if not (folder / "model").is_dir():
                convert(plan.settings.teacher, folder / "model", layout=layout, init=plan.recipe.init)
            cost = measured_cost(folder / "model", [context], folder / "profile.json",
                                 device=plan.settings.device or "cuda")
            write_json_atomic(cached, cost.to_dict())
    return cost.rows[0], cost.label, cost.note


def layer_costs(plan: PlacePlan, out: Path | None) -> LayerCosts:
    linear, label, note = layout_cost(plan, (), out)
    single = {i: layout_cost(plan, (i,), out)[0] for i in plan.candidates}
    return LayerCosts(label, note, plan.settings.context, linear, single)


# ---- the manifest --------------------------------------------------------------------------------------------------

class SearchManifest:
    """``OUT/search.json``: the settings' identity, every run's status and step times, each invocation."""

    def __init__(self, path: Path, plan: PlacePlan):
        self.path = path
        self.data = open_manifest(path, plan, SCHEMA, {"runs": {}, "invocations": []}, "a placement search",
                                  PlaceSettingsError)

    def start(self, plan: PlacePlan, runs) -> None:
        s = plan.settings
        self.data["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
                                         "budget": s.budget, "seeds": list(plan.seeds),
                                         "candidates": list(plan.candidates), "context": s.context,
                                         "cost": plan.cost_mode, "evaluate": s.evaluate is not None})
        for run in runs:
            self.data["runs"].setdefault(f"{run.name}/seed{run.seed}", {"status": "pending"})
        self.write()

    def update(self, key: str, **fields: Any) -> None:
        self.data["runs"].setdefault(key, {}).update(fields)
        self.write()

    def finish(self, seconds: float) -> None:
        self.data["invocations"][-1]["seconds"] = round(seconds, 1)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.data)


# ---- the search ----------------------------------------------------------------------------------------------------

def run_search(plan: PlacePlan, out: Path, manifest: SearchManifest) -> list[dict[str, Any]]:
    """Every (layout, seed) run, finished ones skipped; returns their ``done.json`` records."""
    from mmmamba_bench.sweep.utility import HeldOut, RunSettings, finished, run_key, run_one, search_runs
    from mmmamba_bench.train.data import EncodedCache

    s = plan.settings
    runs = search_runs(plan.candidates, plan.seeds, plan.num_layers, plan.recipe.init)
    manifest.start(plan, runs)
    shared = RunSettings(s.teacher, plan.teacher_sha256, plan.recipe, plan.steps, s.data, s.image_root, s.device,
                         s.keep_models, s.progress)
    heldout: HeldOut | None = None
    encoded = EncodedCache()  # the training rows, encoded once for every run
    records = []
    for i, run in enumerate(runs, 1):
        key = run_key(run, plan.identity_sha256)
        tag = f"{run.name}/seed{run.seed}"
        record = finished(run, out, key)
        if record is None:
            log.info("run %d/%d: %s (attention at %s), seed %d, stage 3 x %d steps", i, len(runs), run.name,
                     list(run.config.attention_layers) or "none", run.seed, plan.steps)
            if heldout is None:
                heldout = HeldOut.load(Path(s.teacher), plan.recipe, s.heldout, data=s.data,
                                       heldout_data=s.heldout_data, image_root=s.image_root,
                                       device=_device(plan))
            manifest.update(tag, status="running")
            try:
                record = run_one(run, key, shared, out, heldout, encoded)
            except BaseException:
                manifest.update(tag, status="interrupted")
                raise
            log.info("%s seed %d: held-out KL %.5f", run.name, run.seed, record["kl"])
        manifest.update(tag, status="done", kl=record["kl"], seconds=record["seconds"])
        records.append(record)
    return records


def _device(plan: PlacePlan) -> str:
    """Where the held-out KL is computed: the distillation's device (``--device``, else the recipe's)."""
    return plan.settings.device or plan.recipe.device


def run_place(settings: PlaceSettings, out: str | os.PathLike) -> Path:
    """Run (or resume) the search into ``out``, propose layouts, optionally evaluate; returns ``out/place.md``."""
    from mmmamba_bench.outputs import check_output_dir, output_lock
    from mmmamba_bench.sweep.budget import check_reachable

    out = check_output_dir(out, "--out")
    plan = prepare(settings)
    t0 = time.perf_counter()
    with output_lock(out, "place"):
        manifest = SearchManifest(out / MANIFEST, plan)
        if plan.costs is None:  # measured: the profiler on this GPU, before any run
            plan.costs = layer_costs(plan, out)
            check_reachable(plan.budget, plan.costs)
        records = run_search(plan, out, manifest)
        search_seconds = time.perf_counter() - t0
        result = analyse(plan, records, lambda at: layout_cost(plan, at, out)[0])
        if settings.evaluate is not None:
            from mmmamba_bench.sweep.evaluate import evaluate_proposal

            t1 = time.perf_counter()
            result.evaluation = evaluate_proposal(plan, result.proposal.layers, out / EVALUATE_DIR)
            result.seconds["evaluate_this_invocation"] = round(time.perf_counter() - t1, 1)
        result.seconds["search_this_invocation"] = round(search_seconds, 1)
        result.seconds["this_invocation"] = round(time.perf_counter() - t0, 1)
        path = write_place(out, plan, result)
        manifest.finish(time.perf_counter() - t0)
    return path
