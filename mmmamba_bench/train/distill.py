"""mmMamba distillation (paper Sec. 4): seed the student from the teacher, then three stages.

- Seeding (Sec. 4.1): :func:`mmmamba_bench.seeding.convert` with the recipe's layout and init ("mimic" by default).
- Stage 1 (Sec. 4.2): layer-wise MSE. Each student Mamba-2 mixer gets the teacher's normed hidden state at that
  layer (the teacher's attention input) and its output is compared with the teacher attention's output on the same
  input (both after the output projection, which is inherited and frozen); the loss is the sum over converted
  layers of the mean squared error over real (non-padding) tokens. Trains phi_stage1 = {a, W_gamma, W_conv, W_G}:
  ``A_log_bias``, ``dt_bias``, the dt rows of ``wvkqgdt``, ``conv1d`` (weight, bias), the g rows of ``wvkqgdt`` and
  ``g_norm_swish_gate.weight``. The q / k / v rows of ``wvkqgdt`` read a frozen copy through a parametrization
  (:class:`~mmmamba_bench.train.loop.KeepRows`), so they stay bit for bit what they were.
- Stage 2 (Sec. 4.3): the same loss, now also training the q / k / v rows (W_Q, W_K, W_V).
- Stage 3 (Sec. 4.4): end-to-end KL(teacher || student) of the next-token distributions, temperature 1, averaged
  over every real token (image tokens included); the student runs on the same inputs without the teacher's
  intermediate states; same trainable set as stage 2. The reference code sums over tokens and divides by the
  batch size only, and leaves ``dt_bias`` / ``A_log_bias`` frozen through a parameter-name slip; here the loss is
  per token and those two parameters train, as the paper describes.

Everything outside the Mamba-2 mixers (MLPs, norms, embeddings, vision parts, LM head), each mixer's ``o_proj``,
and the attention layers a hybrid layout keeps are frozen in every stage, and held once: those student parameters
are the teacher's own tensors while a stage trains (:func:`share_frozen_with_teacher`).

Layout on disk: intermediate results live next to the output, in ``<out>.stages/``: ``seeded/`` and ``stage<k>/``
(released layout) each with ``distill_state.json`` recording the producing stage, its input (path + weight hash),
the stage's recipe hash and the chain so far; a stage refuses an input that is not the previous stage's finished
output (the reference's issue #4). Training checkpoints under ``<out>.stages/.work/stage<k>`` make an interrupted
run resumable: rerunning the same command skips finished stages and continues the current one. ``<out>`` itself
appears only when the whole chain has finished (an atomic copy of the last stage), so its existence means "done".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from mmmamba_bench.model.stack import MMMambaChatModel
from mmmamba_bench.processor import Batch, Processor
from mmmamba_bench.train.data import EncodedCache, EncodedRows, data_sha256
from mmmamba_bench.train.loop import RowMask, StepCallback, Trainable
from mmmamba_bench.train.parallel import (LossCheck, Objective, RowSource, StepPlan, all_bad_rows,
                                           train_parallel)
from mmmamba_bench.train.recipe import DistillRecipe, as_recipe, cap_distill_steps, stage_hash
from mmmamba_bench.results import publish_dir
from mmmamba_bench.train.state import (STATE_FILE, TrainCheckpoint, read_stage_record, weights_sha256,
                                       write_stage_record)

log = logging.getLogger(__name__)

SEEDED = "seeded"
# Per stage: the Mamba-2 mixer parameters that train, and which rows of wvkqgdt (paper Sec. 4.2-4.4).
MIXER_PARAMS = ("conv1d.weight", "conv1d.bias", "dt_bias", "A_log_bias", "g_norm_swish_gate.weight",
                "wvkqgdt.weight")
WVKQGDT_ROWS: dict[int, tuple[str, ...]] = {1: ("g", "dt"), 2: ("v", "k", "q", "g", "dt"),
                                            3: ("v", "k", "q", "g", "dt")}


class StageChainError(RuntimeError):
    """A stage asked to start from something other than the previous stage's finished output."""


def stage_dir(out_dir: Path, stage: int) -> Path:
    return out_dir / f"stage{stage}"


# ---- what trains -------------------------------------------------------------------------------------------------

def mamba_layer_indices(model: MMMambaChatModel) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if layer.kind == "mamba2"]


def layer_prefix(model: MMMambaChatModel, i: int) -> str:
    n_emb = model.num_embedding_layers
    return f"embedding_model.encoder.{i}" if i < n_emb else f"language_model.model.layers.{i - n_emb}"


def stage_trainable(model: MMMambaChatModel, stage: int) -> Trainable:
    """Freeze everything, then enable the stage's Mamba-2 parameters (with q/k/v rows masked in stage 1)."""
    if stage not in WVKQGDT_ROWS:
        raise ValueError(f"there is no distillation stage {stage} (stages are 1, 2, 3)")
    for p in model.parameters():
        p.requires_grad_(False)
    params, masks = {}, []
    for i in mamba_layer_indices(model):
        mixer = model.layers[i].attention
        prefix = f"{layer_prefix(model, i)}.attention"
        rows = torch.zeros(mixer.wvkqgdt.weight.shape[0], dtype=torch.bool)
        for name in WVKQGDT_ROWS[stage]:
            rows[mixer.row_slices()[name]] = True
        for suffix in MIXER_PARAMS:
            p = mixer.get_parameter(suffix)
            if suffix == "wvkqgdt.weight" and not bool(rows.all()):
                mask, p = RowMask.install(mixer.wvkqgdt, "weight", rows)
                masks.append(mask)
            p.requires_grad_(True)
            params[f"{prefix}.{suffix}"] = p
    if not params:
        raise ValueError("the student has no Mamba-2 layers: nothing to distil")
    return Trainable(params, masks)


# ---- losses ------------------------------------------------------------------------------------------------------

def _padding(batch: Batch) -> tuple[torch.Tensor, bool]:
    key_mask = batch.attention_mask.bool()  # [B, L]
    return key_mask, not bool(key_mask.all())


def layerwise_terms(teacher: MMMambaChatModel, student: MMMambaChatModel, batch: Batch,
                    scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1-2 as (sum, real tokens): sum over Mamba-2 layers and real tokens of the squared error between
    student mixer(h_i) and teacher attention(h_i), averaged over hidden units, times ``scale``.

    h_i is the teacher's normed input of layer i, captured with a forward hook on the teacher's mixer.
    """
    layers = mamba_layer_indices(student)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i, module, args, output):
        captured[i] = (args[0], output)  # (normed input [B, L, H], attention output [B, L, H])

    handles = [teacher.layers[i].attention.register_forward_hook(partial(hook, i)) for i in layers]
    try:
        with torch.no_grad():
            teacher(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask, last_logits_only=True)
    finally:
        for h in handles:
            h.remove()
    key_mask, has_padding = _padding(batch)
    B, L = batch.input_ids.shape
    ctxs = [student.context(s, B, L, 0, key_mask if has_padding else None, has_padding) for s in (0, 1)]
    weight = key_mask[..., None].to(captured[layers[0]][1].dtype)  # [B, L, 1]
    hidden = captured[layers[0]][1].shape[-1]
    total = torch.zeros((), device=batch.input_ids.device)
    for i in layers:
        x, target = captured[i]
        y = student.layers[i].attention(x, ctxs[0 if i < student.num_embedding_layers else 1])
        total = total + (((y - target) ** 2) * weight).sum().float() / hidden
    return total * scale, key_mask.sum()


def layerwise_loss(teacher: MMMambaChatModel, student: MMMambaChatModel, batch: Batch,
                   scale: float = 1.0) -> torch.Tensor:
    """Stages 1-2: sum over Mamba-2 layers of MSE(student mixer(h_i), teacher attention(h_i)) on real tokens."""
    total, tokens = layerwise_terms(teacher, student, batch, scale)
    return total / tokens


def kl_terms(teacher: MMMambaChatModel, student: MMMambaChatModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3 as (sum, real tokens): KL(p_teacher || p_student) at temperature 1 summed over real tokens."""
    with torch.no_grad():
        t_logp = F.log_softmax(teacher(batch.input_ids, batch.pixel_values,
                                       attention_mask=batch.attention_mask).logits.float(), dim=-1)  # [B, L, V]
    s_logp = F.log_softmax(student(batch.input_ids, batch.pixel_values,
                                   attention_mask=batch.attention_mask).logits.float(), dim=-1)  # [B, L, V]
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [B, L]
    mask = batch.attention_mask.to(kl.dtype)
    return (kl * mask).sum(), mask.sum()


def kl_loss(teacher: MMMambaChatModel, student: MMMambaChatModel, batch: Batch) -> torch.Tensor:
    """Stage 3: KL(p_teacher || p_student) at temperature 1, averaged over real tokens."""
    total, tokens = kl_terms(teacher, student, batch)
    return total / tokens


# ---- one stage ---------------------------------------------------------------------------------------------------

@dataclass
class StageInputs:
    """What every stage shares: the recipe, the frozen teacher, the training data and how the steps run."""

    recipe: DistillRecipe
    teacher: MMMambaChatModel
    teacher_dir: Path
    processor: Processor
    make_source: Callable[[int], RowSource]  # stage -> its training rows (seeded by recipe.seed + stage)
    device: str
    dtype: torch.dtype
    data_sha256: str  # identity of the training data (the source's sha256)
    accelerator: object  # accelerate.Accelerator: one process or several, DDP or DeepSpeed
    max_steps: int | None = None  # the cap on each stage's steps, if any (recorded in every stage record)
    micro_batch: int | None = None  # rows per forward / backward on one process (None: batch_size / processes)
    gradient_checkpointing: bool = False  # recompute decoder layers in the backward pass (stage 3 at 8K tokens)
    ssd_backend: str = "torch"  # the SSD scan (CUDA: "mamba_ssm", mamba-ssm's Triton scan, forward and backward)


def check_chain(stage: int, input_dir: Path, after: int | None = None) -> dict:
    """Refuse ``input_dir`` unless it is the finished output of stage ``after`` (default ``stage - 1``; 0 = seeded).

    Returns the input's record. The weights must still hash to what the record says.
    """
    expected = stage - 1 if after is None else after
    if not 0 <= expected < stage:
        raise StageChainError(f"stage {stage} cannot follow stage {expected}")
    record = read_stage_record(input_dir)
    want = "the seeded student (distill_state.json stage 0)" if expected == 0 else f"stage {expected}'s output"
    if record is None:
        raise StageChainError(f"stage {stage} refuses {input_dir}: it has no distill_state.json; the input must be "
                              f"{want}")
    if record.get("stage") != expected:
        raise StageChainError(f"stage {stage} refuses {input_dir}: it is the output of stage {record.get('stage')}, "
                              f"but stage {stage} must start from {want} (starting elsewhere is the reference's "
                              f"issue #4; for an ablation chain name it explicitly with --stages and "
                              f"--allow-stage-skip)")
    if weights_sha256(input_dir) != record.get("weights_sha256"):
        raise StageChainError(f"stage {stage} refuses {input_dir}: its weights changed after "
                              f"distill_state.json was written")
    return record


def run_stage(stage: int, inputs: StageInputs, input_dir: Path, out_dir: Path, work_dir: Path,
              after: int | None = None, progress: bool = True, callback: StepCallback | None = None) -> Path:
    """Train stage ``stage`` from ``input_dir`` into ``out_dir`` (resuming from ``work_dir``); returns ``out_dir``.

    Every process of an ``accelerate launch`` calls this; only the main process writes.
    """
    from mmmamba_bench.checkpoint import load_model, save_model

    acc = inputs.accelerator
    record_in = check_chain(stage, input_dir, after)
    recipe, cfg = inputs.recipe, inputs.recipe.stage(stage)
    shash = stage_hash(recipe, stage)
    t0 = time.perf_counter()
    student = load_model(input_dir, device=inputs.device, dtype=inputs.dtype, ssd_backend=inputs.ssd_backend)
    trainable, objective, shared = prepare_stage(inputs.teacher, student, stage, cfg.loss_scale,
                                                 master_fp32=inputs.dtype != torch.float32 and not _is_deepspeed(acc),
                                                 checkpointing=inputs.gradient_checkpointing)
    source = inputs.make_source(stage)
    plan = StepPlan.make(cfg.batch_size, acc.num_processes, inputs.micro_batch)
    n_train = sum(p.numel() for p in trainable.params.values())
    n_rows = sum(rm.frozen_numel for rm in trainable.row_masks)
    log.info("stage %d: %d trainable parameters (%.1f%% of %d) from %s; %d process(es) x %d accumulated x %d rows; "
             "%d frozen tensors (%.1f MiB) shared with the teacher", stage, n_train - n_rows,
             100 * (n_train - n_rows) / sum(p.numel() for p in student.parameters()),
             sum(p.numel() for p in student.parameters()), input_dir, plan.processes, plan.accumulation,
             plan.micro_batch, shared.tensors, shared.bytes / 2 ** 20)
    try:
        losses = train_parallel(name=f"stage{stage}", trainable=trainable, objective=objective, source=source,
                                collate=inputs.processor.collate, cfg=cfg, plan=plan,
                                checkpoint=TrainCheckpoint(work_dir, f"{shash}:{inputs.data_sha256}"),
                                checkpoint_every=recipe.checkpoint_every, accelerator=acc, progress=progress,
                                callback=callback, loss_checks=first_loss_checks(recipe, stage, record_in))
    finally:
        trainable.close()
    student.to(inputs.dtype)
    student.eval()
    skipped = dict(sorted(Counter(all_bad_rows(acc, source).values()).items()))
    if skipped:
        log.warning("stage %d: rows skipped %s (each logged with its file and line)", stage, skipped)
    record = {
        "stage": stage, "complete": True, "recipe_sha256": shash, "data_sha256": inputs.data_sha256,
        "input": {"path": str(input_dir), "stage": record_in["stage"], "weights_sha256": record_in["weights_sha256"]},
        "chain": list(record_in.get("chain", [])) + [stage],
        "teacher": record_in.get("teacher"), "layout": record_in.get("layout"),
        "steps": cfg.steps, "max_steps": inputs.max_steps, "last_losses": losses[-10:],
        "skipped_rows": skipped,
        "engine": {"processes": plan.processes, "micro_batch": plan.micro_batch,
                   "accumulation": plan.accumulation, "distributed": str(acc.distributed_type),
                   "mixed_precision": acc.mixed_precision, "ssd_scan": student.code_path.ssd_scan,
                   "gradient_checkpointing": inputs.gradient_checkpointing,
                   "shared_with_teacher": {"tensors": shared.tensors, "bytes": shared.bytes}},
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }

    def add_record(tmp: Path) -> None:  # weights and record are published together (one rename)
        write_stage_record(tmp, {**record, "weights_sha256": weights_sha256(tmp)})

    if acc.is_main_process:
        save_model(student, out_dir, overwrite=True, side_files_from=input_dir, before_publish=add_record)
        shutil.rmtree(work_dir, ignore_errors=True)
    acc.wait_for_everyone()
    return out_dir


@dataclass(frozen=True)
class SharedFrozen:
    """What :func:`share_frozen_with_teacher` did: student parameters now held once, as the teacher's tensors."""

    tensors: int
    bytes: int
    differing: tuple[str, ...] = ()  # frozen parameters named as the teacher's but not equal to them (kept)


def share_frozen_with_teacher(teacher: MMMambaChatModel, student: MMMambaChatModel,
                              trainable: Trainable) -> SharedFrozen:
    """Point each frozen student parameter at the teacher's parameter of the same name when the two are equal bit
    for bit (same shape, dtype and device): the student inherits them from the teacher and no stage trains them
    (MLPs, norms, embeddings, vision, LM head, o_proj, a hybrid's attention layers), so one copy serves both — at
    the 2.7B shapes 2.20B parameters (4.1 GiB in bf16) for mmMamba-linear, 2.30B (4.3 GiB) for the hybrid. A frozen
    parameter that differs (a student whose frozen parts were trained elsewhere) keeps its own copy and is named in
    ``differing``. Neither model's values change.
    """
    trained = {id(p) for p in trainable.params.values()}
    teachers = dict(teacher.named_parameters())
    n = nbytes = 0
    differing = []
    for name, p in list(student.named_parameters(remove_duplicate=False)):
        t = teachers.get(name)
        if t is None or p.requires_grad or id(p) in trained:
            continue
        if t is not p:
            if (t.shape != p.shape or t.dtype != p.dtype or t.device != p.device or t.requires_grad
                    or not torch.equal(t, p)):
                differing.append(name)
                continue
            owner, _, attr = name.rpartition(".")
            setattr(student.get_submodule(owner), attr, t)
        n += 1
        nbytes += t.numel() * t.element_size()
    return SharedFrozen(n, nbytes, tuple(differing))


def prepare_stage(teacher: MMMambaChatModel, student: MMMambaChatModel, stage: int, loss_scale: float, *,
                  master_fp32: bool, checkpointing: bool,
                  share_frozen: bool = True) -> tuple[Trainable, Objective, SharedFrozen]:
    """The stage's trained parameters, the module the engine wraps (student + the stage's loss) and what the student
    shares with the teacher (``share_frozen``: :func:`share_frozen_with_teacher`); the student is left in training
    mode. ``master_fp32``: mixed precision without DeepSpeed (which keeps its own fp32 copy): the trained parameters
    become fp32 master copies."""
    trainable = stage_trainable(student, stage)
    shared = share_frozen_with_teacher(teacher, student, trainable) if share_frozen else SharedFrozen(0, 0)
    if shared.differing:
        log.warning("stage %d: %d frozen student parameter(s) differ from the teacher's of the same name (kept as "
                    "their own copies): %s", stage, len(shared.differing), ", ".join(shared.differing[:4]))
    if master_fp32:
        for p in trainable.params.values():
            p.data = p.data.float()
    student.gradient_checkpointing = checkpointing
    student.train()
    if stage == 3:
        terms = partial(kl_terms, teacher, student)
    else:
        terms = partial(layerwise_terms, teacher, student, scale=loss_scale)
    return trainable, Objective(student, terms, list(trainable.params.values())), shared


def first_loss_checks(recipe: DistillRecipe, stage: int, record_in: dict) -> list[LossCheck]:
    """The ranges the first steps' losses must fall in: the recipe's ``first_losses`` for the stage, and for stage 2
    a first loss at most 10x the mean loss stage 1 ended with (the same loss on the same weights, before any
    update)."""
    checks = []
    bounds = getattr(recipe.first_losses, f"stage{stage}")
    if bounds:
        checks.append(LossCheck(bounds[0], bounds[1], recipe.first_losses.steps,
                                f"(the recipe's first_losses.stage{stage})"))
    last = record_in.get("last_losses") or []
    if stage == 2 and record_in.get("stage") == 1 and last:
        end = sum(last) / len(last)
        checks.append(LossCheck(0.0, 10 * end, 1, f"Stage 2 starts from stage 1's weights with stage 1's loss, "
                                                  f"which ended at {end:.4g}: is the input really stage 1's output "
                                                  f"of this teacher?"))
    return checks


def _is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


# ---- the whole pipeline ------------------------------------------------------------------------------------------

def seed_student(recipe: DistillRecipe, teacher_dir: Path, out_dir: Path) -> Path:
    """``<out>/seeded``: the paper's seeding (Sec. 4.1), recorded as stage 0; reused when it matches."""
    from mmmamba_bench.seeding import convert

    seeded = out_dir / SEEDED
    teacher_hash = weights_sha256(teacher_dir)
    want = {"teacher_sha256": teacher_hash, "layout": recipe.layout, "init": recipe.init, "seed": recipe.seed}
    record = read_stage_record(seeded)
    if record is not None:
        got = {"teacher_sha256": record.get("teacher", {}).get("weights_sha256"), "layout": record.get("layout"),
               "init": record.get("init"), "seed": record.get("seed")}
        if got != want:
            raise FileExistsError(f"{seeded} was seeded differently ({got} vs {want}); use a new output directory")
        if weights_sha256(seeded) != record.get("weights_sha256"):
            raise StageChainError(f"{seeded}: weights changed after distill_state.json was written")
        return seeded
    record = {"stage": 0, "complete": True, "teacher": {"path": str(teacher_dir), "weights_sha256": teacher_hash},
              "layout": recipe.layout, "init": recipe.init, "seed": recipe.seed, "chain": [0]}
    convert(teacher_dir, seeded, layout=recipe.layout, init=recipe.init, seed=recipe.seed, overwrite=True,
            before_publish=lambda tmp: write_stage_record(tmp, {**record, "weights_sha256": weights_sha256(tmp)}))
    return seeded


def parse_stages(stages: str | Sequence[int], allow_skip: bool = False) -> list[int]:
    """``"1,2,3"`` / ``[1, 3]`` -> increasing stage list; a chain other than 1, 2, 3 needs ``allow_skip``."""
    items = [int(s) for s in stages.split(",")] if isinstance(stages, str) else [int(s) for s in stages]
    if not items or any(s not in (1, 2, 3) for s in items) or items != sorted(set(items)):
        raise ValueError(f"stages must be an increasing list drawn from 1, 2, 3; got {stages!r}")
    if items != [1, 2, 3][:len(items)] and not allow_skip:
        raise StageChainError(f"stages {items} skip a stage (each stage starts from the previous one's output: "
                              f"seeded -> 1 -> 2 -> 3); for an ablation like the paper's Table 3 pass "
                              f"allow_skip=True / --allow-stage-skip")
    return items


def distill(recipe: DistillRecipe | str | os.PathLike, teacher_dir: str | os.PathLike, out_dir: str | os.PathLike,
            stages: str | Sequence[int] = (1, 2, 3), *, data_dir: str | os.PathLike | None = None,
            image_root: str | os.PathLike | None = None, allow_skip: bool = False, device: str | None = None,
            progress: bool = True, callback: StepCallback | None = None, evaluate: bool = True,
            max_steps: int | None = None, encoded: EncodedCache | None = None, max_threads: int | None = None,
            micro_batch: int | None = None) -> Path:
    """Seed and distil a student from ``teacher_dir``; the final model lands in ``out_dir`` (returned).

    ``data_dir``: the training data: a mini-suite folder (``data.source: minisuite``; None = tasks/mini/data) or, for
    ``data.source: internvl``, an InternVL-format ``.jsonl`` file or meta JSON (:mod:`mmmamba_bench.train.sft`;
    images under ``image_root``, default the file's folder).

    Started by ``accelerate launch`` (every process calls this with the same arguments) it trains data-parallel
    (:mod:`mmmamba_bench.train.parallel`); only the main process writes. Rerunning the same call skips finished
    stages (after checking their records match this recipe, input and data) and resumes an interrupted stage from
    its last training checkpoint, on any number of processes. ``callback(step, loss)`` runs after every optimizer
    step (tests use it to simulate an interruption). ``max_steps`` caps every stage's steps (a smoke run,
    :func:`~mmmamba_bench.train.recipe.cap_distill_steps`; recorded as ``max_steps`` in each stage record).
    ``encoded``: a cache of encoded mini-suite data shared between calls in one process (the demo distils two
    students from one teacher on one data set). ``max_threads`` caps the recipe's ``threads``; ``micro_batch``
    overrides the recipe's ``micro_batch_size`` (execution settings, outside the stage hashes). A second run on the
    same ``out_dir`` is refused while the first holds it (:mod:`mmmamba_bench.outputs`).
    """
    from mmmamba_bench.outputs import check_output_target, output_lock

    recipe = as_recipe(recipe, DistillRecipe)
    acc = make_accelerator(recipe, device)
    check_output_target(out_dir, "--out")
    with output_lock(out_dir, "distill") if acc.is_main_process else contextlib.nullcontext():
        return _distill(recipe, teacher_dir, out_dir, stages, data_dir=data_dir, image_root=image_root,
                        allow_skip=allow_skip, device=device, progress=progress, callback=callback,
                        evaluate=evaluate, max_steps=max_steps, encoded=encoded, max_threads=max_threads,
                        micro_batch=micro_batch, acc=acc)


def make_accelerator(recipe: DistillRecipe, device: str | None = None):
    """The ``accelerate.Accelerator`` of this process: whatever ``accelerate launch`` set up (DDP, DeepSpeed, CPU
    gloo), or a single process; bf16 recipes in mixed precision."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    device = device or recipe.device
    mixed = "bf16" if recipe.dtype == "bfloat16" else "no"
    # `accelerate launch --use_deepspeed` on a CPU (DS_ACCELERATOR=cpu): cpu=True would quietly run plain processes
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    # the frozen-row copies (KeepRows buffers) are equal on every process: no need to broadcast them each step
    return Accelerator(cpu=device == "cpu" and not deepspeed, mixed_precision=mixed,
                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def _data_source(recipe: DistillRecipe, data: Path | None, image_root: Path | None, processor: Processor,
                 teacher_dir: Path, encoded: EncodedCache | None) -> tuple[Callable[[int], RowSource], str]:
    """(stage -> its row source, the data's sha256), checked before any work."""
    if recipe.data.source == "minisuite":
        if data is not None and data.is_file():
            raise ValueError(f"--data {data} is a file, but the recipe's data.source is 'minisuite' (a folder "
                             f"written by `mmmamba-bench data`); InternVL-format .jsonl / meta JSON needs "
                             f"data.source: internvl")
        data_hash = data_sha256(data)
        cache = encoded or EncodedCache()  # encoded once, shared by the stages

        def minisuite(stage: int) -> RowSource:
            items = cache.get(processor, teacher_dir, data, "train", recipe.data.tasks,
                                                    recipe.data.max_examples)
            return EncodedRows(items, recipe.stage(stage).batch_size, recipe.seed + stage, data_hash)

        return minisuite, data_hash
    from mmmamba_bench.train.sft import SFTData

    if data is None or not data.is_file():
        raise ValueError(f"the recipe's data.source is 'internvl': pass --data with an InternVL-format .jsonl file "
                         f"or meta JSON (got {data})")
    indexed = SFTData.open(data, processor, image_root=image_root, max_tokens=recipe.data.max_tokens,
                           seed=recipe.seed)  # one pass over the files; each stage reorders the same index

    def sft(stage: int) -> RowSource:
        return indexed.reseeded(recipe.seed + stage)

    return sft, indexed.sha256


def _distill(recipe: DistillRecipe, teacher_dir: str | os.PathLike, out_dir: str | os.PathLike,
             stages: str | Sequence[int], *, data_dir: str | os.PathLike | None, image_root: str | os.PathLike | None,
             allow_skip: bool, device: str | None, progress: bool, callback: StepCallback | None, evaluate: bool,
             max_steps: int | None, encoded: EncodedCache | None, max_threads: int | None, micro_batch: int | None,
             acc) -> Path:
    from mmmamba_bench.checkpoint import load_model

    if max_steps is not None:
        recipe = cap_distill_steps(recipe, max_steps)
    chain = parse_stages(stages, allow_skip)
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    data = Path(data_dir) if data_dir is not None else None
    root = Path(image_root) if image_root is not None else None
    if max_threads is not None and max_threads < 1:
        raise ValueError(f"max_threads must be at least 1, got {max_threads}")
    threads = recipe.threads if max_threads is None else min(recipe.threads or max_threads, max_threads)
    if threads:
        torch.set_num_threads(threads)
    device = str(acc.device) if (device or recipe.device) != "cpu" else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[recipe.dtype]
    micro = micro_batch if micro_batch is not None else recipe.micro_batch_size
    for k in chain:  # the split of every stage's batch over the processes, checked before any work
        StepPlan.make(recipe.stage(k).batch_size, acc.num_processes, micro)
    final = read_stage_record(out_dir)
    if final is not None and final.get("complete"):
        if final.get("chain") != [0] + chain or final.get("recipe_sha256") != stage_hash(recipe, chain[-1]):
            raise FileExistsError(f"{out_dir} holds a distillation with another chain or recipe; choose a new --out")
        log.info("distillation already finished: %s", out_dir)
        return out_dir
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists but is not a finished distillation; choose a new --out")
    processor = Processor.from_pretrained(teacher_dir, max_tiles=recipe.data.max_tiles)
    make_source, data_hash = _data_source(recipe, data, root, processor, teacher_dir, encoded)
    work_root = out_dir.with_name(out_dir.name + ".stages")
    for k in chain:  # an interrupted stage of another recipe or on other data: refused before any work
        TrainCheckpoint(work_root / ".work" / f"stage{k}", f"{stage_hash(recipe, k)}:{data_hash}").check_tag()
    t0 = time.perf_counter()
    if acc.is_main_process:
        work_root.mkdir(parents=True, exist_ok=True)
        seed_student(recipe, teacher_dir, work_root)
    acc.wait_for_everyone()
    seeded = work_root / SEEDED
    if read_stage_record(seeded) is None:
        raise StageChainError(f"{seeded}: the seeded student is missing (the main process did not write it)")

    inputs: StageInputs | None = None
    prev_dir, prev_stage = seeded, 0
    for k in chain:
        dest = stage_dir(work_root, k)
        record = read_stage_record(dest)
        if record is not None and record.get("complete"):
            if record.get("recipe_sha256") != stage_hash(recipe, k):
                raise FileExistsError(f"{dest} was produced with a different stage-{k} recipe; use a new output "
                                      f"directory")
            if record["input"]["weights_sha256"] != weights_sha256(prev_dir):
                raise FileExistsError(f"{dest} was produced from another input than {prev_dir}; use a new output "
                                      f"directory")
            if record.get("data_sha256") != data_hash:
                raise FileExistsError(f"{dest} was trained on other data (sha256 "
                                      f"{str(record.get('data_sha256'))[:12]}..., this data {data_hash[:12]}...); "
                                      f"use a new output directory")
            log.info("stage %d already finished: %s", k, dest)
        else:
            if inputs is None:
                teacher = load_model(teacher_dir, device=device, dtype=dtype, ssd_backend="torch")
                for p in teacher.parameters():
                    p.requires_grad_(False)
                inputs = StageInputs(recipe, teacher, teacher_dir, processor, make_source, device, dtype, data_hash,
                                     acc, max_steps, micro, recipe.gradient_checkpointing, recipe.ssd_backend)
            run_stage(k, inputs, prev_dir, dest, work_root / ".work" / f"stage{k}", after=prev_stage,
                      progress=progress, callback=callback)
        prev_dir, prev_stage = dest, k
    log.info("distillation done in %.1f s: %s", time.perf_counter() - t0, prev_dir)
    if not acc.is_main_process:
        return out_dir
    record = read_stage_record(prev_dir) or {}
    if evaluate and recipe.eval.items_per_task > 0 and recipe.data.source == "minisuite":
        from mmmamba_bench.train.quickeval import format_scores, validation_accuracy

        model = load_model(prev_dir, device=device, dtype=dtype, ssd_backend="torch")
        processor = Processor.from_pretrained(prev_dir, max_tiles=recipe.data.max_tiles)
        scores = validation_accuracy(model, processor, data, recipe.eval.items_per_task, recipe.data.tasks,
                                     recipe.eval.batch_size, recipe.eval.max_new_tokens)
        log.info("%s: validation exact match %s", prev_dir, format_scores(scores))
        record["validation_exact_match"] = scores
    record["stages_dir"] = str(work_root)
    publish(prev_dir, out_dir, record)
    return out_dir


def publish(src: Path, dst: Path, record: dict) -> None:
    """Copy the finished checkpoint ``src`` to ``dst`` atomically (temp sibling + rename), with ``record``."""
    tmp = dst.with_name(f".{dst.name}.publish")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    write_stage_record(tmp, record)
    publish_dir(tmp, dst, last=STATE_FILE)
