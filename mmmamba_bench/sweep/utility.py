"""The runs of an attention-placement search: one short stage-3 distillation per (layout, seed), and its held-out KL.

A run's student keeps attention at one candidate layer (or none: the all-linear baseline), every other layer Mamba-2,
seeded as the recipe says with each Mamba-2 layer as in the all-linear student of the same seed (:func:`seed_paired`);
it is distilled by stage 3 alone for ``steps`` steps with the recipe's seed replaced by
the run's seed, the library call ``mmmamba-bench distill --stages 3 --allow-stage-skip --max-steps N`` makes
(:func:`mmmamba_bench.train.distill.distill`), in ``OUT/runs/<layout>/seed<s>/model``. Its score is the KL divergence
KL(teacher || student) of the next-token distributions on a fixed held-out set, averaged over real tokens: the stage-3
loss (:func:`mmmamba_bench.train.distill.kl_terms`) on rows no run trains on (:class:`HeldOut`).

``done.json`` (written last, atomically) marks a finished run, which is never redone; an interrupted run resumes its
distillation mid-stage (distill's own checkpoints). The student's weights are removed once ``done.json`` records
their hash, unless they are asked to be kept (a 32-layer search holds 99 students).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmmamba_bench.results import write_json_atomic
from mmmamba_bench.sweep.configs import SweepConfig, layout_string
from mmmamba_bench.sweep.paths import ConfigPaths, read_done

log = logging.getLogger(__name__)

BASELINE = "linear"
STAGES = (3,)
HELDOUT_SPLIT = "validation"  # mini-suite rows neither distillation (train) nor lmms-eval (test) reads


def run_name(layer: int | None) -> str:
    return BASELINE if layer is None else f"attn-{layer}"


@dataclass(frozen=True)
class SearchRun:
    """One (layout, seed) of the search: ``layer`` is the one attention layer kept (None: the all-linear student)."""

    layer: int | None
    seed: int
    config: SweepConfig  # layout, block types, init; stages (3,)

    @property
    def name(self) -> str:
        return self.config.name

    def paths(self, out: Path) -> ConfigPaths:
        return ConfigPaths(Path(out) / "runs" / self.name / f"seed{self.seed}")

    def identity(self) -> dict[str, Any]:
        return {**self.config.identity(), "seed": self.seed}


def search_runs(candidates: tuple[int, ...], seeds: tuple[int, ...], num_layers: int, init: str) -> list[SearchRun]:
    """Seed by seed (an interrupted search leaves whole seeds done), the baseline first, then each candidate."""
    runs = []
    for seed in seeds:
        for layer in (None, *candidates):
            at = () if layer is None else (layer,)
            types = tuple("mha" if i in at else "mamba2" for i in range(num_layers))
            cfg = SweepConfig(run_name(layer), layout_string(at, num_layers), types, init=init, stages=STAGES)
            runs.append(SearchRun(layer, seed, cfg))
    return runs


# ---- the held-out set ----------------------------------------------------------------------------------------------

@dataclass
class HeldOut:
    """The held-out batches and the teacher (loaded once per search), on ``device``."""

    teacher: Any  # MMMambaChatModel, float32, frozen
    batches: list  # [Batch], each [B, L] with its tiles
    examples: int
    device: str

    @classmethod
    def load(cls, teacher_dir: Path, recipe, examples: int, *, data: Path | None, heldout_data: Path | None,
             image_root: Path | None, device: str, batch_size: int = 16) -> HeldOut:
        """Mini-suite recipes: ``examples`` rows of the validation split of ``data`` (the training folder; a fixed
        random subset of the requested tasks, :func:`~mmmamba_bench.train.data.load_encoded`). InternVL recipes: the
        first ``examples`` good rows of ``heldout_data`` (an InternVL ``.jsonl`` / meta JSON)."""
        import torch

        from mmmamba_bench.checkpoint import load_model
        from mmmamba_bench.processor import Processor

        processor = Processor.from_pretrained(teacher_dir, max_tiles=recipe.data.max_tiles)
        if recipe.data.source == "minisuite":
            from mmmamba_bench.train.data import load_encoded

            items, _ = load_encoded(processor, data, HELDOUT_SPLIT, recipe.data.tasks, examples)
        else:
            from mmmamba_bench.train.sft import SFTData

            rows = SFTData.open(heldout_data, processor, image_root=image_root, max_tokens=recipe.data.max_tokens)
            items = []
            for row in range(rows.num_rows):
                enc = rows.encode(row)
                if enc is not None:
                    items.append(enc)
                if len(items) == examples:
                    break
            if not items:
                raise ValueError(f"--heldout-data {heldout_data}: no usable rows")
        teacher = load_model(teacher_dir, device=device, dtype=torch.float32, ssd_backend="torch")
        for p in teacher.parameters():
            p.requires_grad_(False)
        batches = [processor.collate(items[i:i + batch_size]).to(device) for i in range(0, len(items), batch_size)]
        log.info("held-out KL on %d rows (%d batches)", len(items), len(batches))
        return cls(teacher, batches, len(items), device)

    def kl(self, student) -> tuple[float, int]:
        """(KL(teacher || student) per real token, real tokens) over the held-out rows."""
        import torch

        from mmmamba_bench.train.distill import kl_terms

        total, tokens = 0.0, 0
        student.eval()
        with torch.no_grad():
            for batch in self.batches:
                t, n = kl_terms(self.teacher, student, batch)
                total, tokens = total + float(t), tokens + int(n)
        return total / tokens, tokens


def heldout_identity(recipe, examples: int, *, data: Path | None, heldout_data: Path | None,
                     image_root: Path | None, teacher_dir: Path) -> dict[str, Any]:
    """What determines the held-out rows (checked before any work: a missing file is named with its flag)."""
    if recipe.data.source == "minisuite":
        from mmmamba_bench.train.data import data_sha256

        try:
            sha = data_sha256(data)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"--data: {exc}") from None
        return {"source": f"minisuite:{HELDOUT_SPLIT}", "data_sha256": sha, "tasks": recipe.data.tasks,
                "examples": examples, "max_tiles": recipe.data.max_tiles}
    if heldout_data is None or not Path(heldout_data).is_file():
        raise FileNotFoundError(f"--heldout-data: the recipe reads InternVL-format data (data.source: internvl); the "
                                f"held-out KL needs rows no run trains on: pass a .jsonl file or meta JSON (got "
                                f"{heldout_data})")
    from mmmamba_bench.processor import Processor
    from mmmamba_bench.train.sft import SFTData

    processor = Processor.from_pretrained(teacher_dir, max_tiles=recipe.data.max_tiles)
    rows = SFTData.open(heldout_data, processor, image_root=image_root, max_tokens=recipe.data.max_tokens)
    return {"source": "internvl", "sha256": rows.sha256, "examples": examples, "max_tiles": recipe.data.max_tiles}


# ---- paired seeding ------------------------------------------------------------------------------------------------

def seed_paired(run: SearchRun, recipe, teacher_dir: Path, teacher_sha256: str, model_dir: Path) -> Path:
    """The run's seeded student, written where distill looks for it (``<model>.stages/seeded``, recorded as distill's
    own seeding records it, so distill reuses it): the recipe's seeding (:func:`mmmamba_bench.seeding.seed_state_dict`)
    except that every Mamba-2 layer takes the tensors the all-linear student of the same seed has there.

    The library's seeding draws the converted layers' random parts (the mimic gate rows and dt bias) from one generator
    in layer order, so keeping layer i as attention would shift the draws of every converted layer after it; taking
    them from the all-linear student makes the runs of one seed differ only in layer i, so a seed pairs them exactly
    (same seeding, same batches)."""
    from mmmamba_bench.checkpoint import read_state_dict, save_checkpoint
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.seeding import layer_prefixes, seed_state_dict
    from mmmamba_bench.train.distill import SEEDED
    from mmmamba_bench.train.state import read_stage_record, weights_sha256, write_stage_record

    seeded = model_dir.with_name(model_dir.name + ".stages") / SEEDED
    if read_stage_record(seeded) is not None:
        return seeded  # written by an earlier attempt (distill checks that it matches)
    config = ChatConfig.from_json_file(Path(teacher_dir) / "config.json")
    teacher = read_state_dict(teacher_dir)
    types = list(run.config.block_types)
    student_config, student = seed_state_dict(config, teacher, types, init=recipe.init, seed=recipe.seed)
    if "mha" in types:
        _, linear = seed_state_dict(config, teacher, ["mamba2"] * len(types), init=recipe.init, seed=recipe.seed)
        for prefix, kind in zip(layer_prefixes(config), types):
            if kind == "mamba2":
                student.update({k: v for k, v in linear.items() if k.startswith(f"{prefix}.attention.")})
    record = {"stage": 0, "complete": True, "teacher": {"path": str(teacher_dir), "weights_sha256": teacher_sha256},
              "layout": recipe.layout, "init": recipe.init, "seed": recipe.seed, "chain": [0],
              "paired_draws": "every Mamba-2 layer as in the all-linear student of this seed (mmmamba-bench place)"}
    seeded.parent.mkdir(parents=True, exist_ok=True)
    def add_record(tmp: Path) -> None:  # weights and record are published together (one rename), as distill's seeding
        write_stage_record(tmp, {**record, "weights_sha256": weights_sha256(tmp)})

    save_checkpoint(student_config, student, seeded, side_files_from=teacher_dir, before_publish=add_record)
    return seeded


# ---- one run -------------------------------------------------------------------------------------------------------

def run_key(run: SearchRun, settings_sha256: str) -> str:
    payload = {"run": run.identity(), "settings_sha256": settings_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def finished(run: SearchRun, out: Path, key: str) -> dict[str, Any] | None:
    """The run's ``done.json`` if it is finished under these settings; a record of other settings is refused."""
    paths = run.paths(out)
    done = read_done(paths)
    if done is None:
        return None
    if done.get("key") != key:
        raise ValueError(f"{paths.done} records run {run.name} seed {run.seed} under other settings; choose "
                         f"another --out")
    return done


@dataclass(frozen=True)
class RunSettings:
    """What every run of one search shares."""

    teacher: Path
    teacher_sha256: str
    recipe: Any  # DistillRecipe (its layout and seed are set per run)
    steps: int  # stage-3 steps (a cap on the recipe's)
    data: Path | None
    image_root: Path | None
    device: str | None
    keep_models: bool
    progress: bool


def run_one(run: SearchRun, key: str, s: RunSettings, out: Path, heldout: HeldOut, encoded) -> dict[str, Any]:
    """Distil (or resume) and score one run; returns its ``done.json`` record."""
    from mmmamba_bench.checkpoint import load_model
    from mmmamba_bench.train import distill as distill_module  # the module: tests wrap its distill()
    from mmmamba_bench.train.state import read_stage_record, weights_sha256

    paths = run.paths(out)
    timings: dict[str, float] = json.loads(paths.timings.read_text()) if paths.timings.is_file() else {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)
            write_json_atomic(paths.timings, timings)

    recipe = dataclasses.replace(s.recipe, layout=run.config.layout, seed=run.seed)
    paths.folder.mkdir(parents=True, exist_ok=True)
    if not paths.model.is_dir():
        timed("seed", lambda: seed_paired(run, recipe, s.teacher, s.teacher_sha256, paths.model))
    timed("distill", lambda: distill_module.distill(
        recipe, s.teacher, paths.model, stages=run.config.stages, allow_skip=run.config.allow_skip,
        data_dir=s.data, image_root=s.image_root, device=s.device, progress=s.progress, evaluate=False,
        max_steps=s.steps, encoded=encoded))
    student = load_model(paths.model, device=heldout.device, ssd_backend="torch")
    kl, tokens = timed("kl", lambda: heldout.kl(student))
    stage = read_stage_record(paths.model) or {}
    record = {"key": key, "name": run.name, "layer": run.layer, "seed": run.seed, "layout": run.config.layout,
              "attention_layers": list(run.config.attention_layers), "kl": kl, "tokens": tokens,
              "examples": heldout.examples, "stage3_steps": stage.get("steps"),
              "stage3_last_losses": stage.get("last_losses"), "model_weights_sha256": weights_sha256(paths.model),
              "model_kept": s.keep_models, "seconds": timings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(paths.done, record)
    if not s.keep_models:
        shutil.rmtree(paths.model.with_name(paths.model.name + ".stages"), ignore_errors=True)
        shutil.rmtree(paths.model, ignore_errors=True)
    return record
