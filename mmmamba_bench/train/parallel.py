"""Distillation steps on one process or many, through accelerate: plain DDP or DeepSpeed ZeRO-2.

One optimizer step reads the rows at positions ``[step * G, (step + 1) * G)`` of the data order (G = the recipe's
global batch), whatever the number of processes P: process r runs micro-batch m on the ``b`` rows starting at
``step * G + (m * P + r) * b``, for m < A = G / (P * b) (gradient accumulation). Every loss is a SUM over the real
tokens of a micro-batch divided by the real-token count of the whole global batch (summed over micro-batches and
processes before the first forward), and the gradients of all micro-batches and processes are summed, so a step's
gradient is that of the global batch's per-token mean whatever P, b and A are: one process with batch 2b, two
processes with batch b and one process accumulating two micro-batches of b give the same parameters (float
rounding aside). Rows a data source cannot use (bad rows, too long) drop out of their micro-batch; a micro-batch left
empty still takes part in the gradient exchange with a zero loss.

Engines: ``accelerate launch`` picks plain DDP (CPU: gloo) or DeepSpeed (``--use_deepspeed --deepspeed_config_file
distill/zero2.json``); bf16 recipes train in mixed precision (frozen weights bf16, trained parameters fp32 master
copies, matrix products in bf16). Resumable checkpoints are the project's own (safetensors + JSON,
:class:`~mmmamba_bench.train.state.TrainCheckpoint`), written by rank 0 and independent of P, so a run resumes on
any number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from mmmamba_bench.processor import Batch, Encoded
from mmmamba_bench.train.loop import StepCallback, Trainable, make_optimizer
from mmmamba_bench.train.recipe import OptimConfig
from mmmamba_bench.train.schedule import wsd_factor
from mmmamba_bench.train.state import TrainCheckpoint, rng_state, set_rng_state

log = logging.getLogger(__name__)


class RowSource(Protocol):
    """Training rows by position: an endless, seeded order (a pure function of the position, so runs resume)."""

    sha256: str  # identity of the data (recorded with every checkpoint and finished stage)

    def row_at(self, k: int) -> int: ...  # row id at position k

    def encode(self, row: int) -> Encoded | None: ...  # None: a row the source skips (counted by the source)

    def bad_rows(self) -> dict[int, str]: ...  # row id -> reason of the rows skipped so far in this process

    def note_bad(self, rows: dict[int, str]) -> None: ...  # rows known bad (other processes, before a resume)


@dataclass(frozen=True)
class StepPlan:
    """How one global batch is split: P processes x A accumulated micro-batches x b rows."""

    global_batch: int
    processes: int
    micro_batch: int

    @staticmethod
    def make(global_batch: int, processes: int, micro_batch: int | None = None) -> "StepPlan":
        """``micro_batch`` None: the largest that needs no accumulation (G / P)."""
        if micro_batch is None:
            if global_batch % processes:
                raise ValueError(f"the global batch {global_batch} does not split over {processes} processes; "
                                 f"pass a micro-batch size that divides {global_batch} / {processes}")
            micro_batch = global_batch // processes
        if micro_batch < 1 or global_batch % (processes * micro_batch):
            raise ValueError(f"micro-batch {micro_batch} x {processes} processes does not divide the global batch "
                             f"{global_batch} (the recipe's batch_size): choose a micro-batch size b with "
                             f"{global_batch} % ({processes} * b) == 0")
        return StepPlan(global_batch, processes, micro_batch)

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.processes * self.micro_batch)

    def positions(self, step: int, rank: int, micro: int) -> range:
        start = step * self.global_batch + (micro * self.processes + rank) * self.micro_batch
        return range(start, start + self.micro_batch)


class Objective(nn.Module):
    """The module the engine wraps: the student (trained) and a loss; the frozen teacher stays outside it.

    ``loss_terms(batch) -> (sum over real tokens, real-token count)``; forward returns ``sum / denominator``.
    """

    def __init__(self, student: nn.Module, loss_terms: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                 trained: Sequence[nn.Parameter]):
        super().__init__()
        self.student = student
        self._loss_terms = loss_terms
        self._trained = list(trained)

    def forward(self, batch: Batch | None, denominator: torch.Tensor) -> torch.Tensor:
        if batch is None:  # an empty micro-batch: zero loss, but every trained parameter joins the reduction
            return sum(p.sum() for p in self._trained) * 0.0
        total, _ = self._loss_terms(batch)
        return total / denominator


def real_tokens(items: Sequence[Encoded]) -> int:
    return sum(len(e.input_ids) for e in items)


@dataclass
class LossCheck:
    """The first steps' losses must lie in ``[low, high]`` (a stage started from the wrong input is far outside)."""

    low: float
    high: float
    steps: int = 3
    hint: str = ""


def train_parallel(*, name: str, trainable: Trainable, objective: Objective, source: RowSource,
                   collate: Callable[[list[Encoded]], Batch], cfg: OptimConfig, plan: StepPlan,
                   checkpoint: TrainCheckpoint, checkpoint_every: int, accelerator, progress: bool = True,
                   callback: StepCallback | None = None, loss_checks: Sequence[LossCheck] = ()) -> list[float]:
    """Run (or resume) ``cfg.steps`` optimizer steps; returns the global losses of the steps run in this call.

    ``accelerator``: an ``accelerate.Accelerator`` (one process or several; DDP or DeepSpeed). Every process calls
    this with the same arguments.
    """
    from tqdm.auto import tqdm

    if plan.processes != accelerator.num_processes:
        raise ValueError(f"the step plan is for {plan.processes} processes, accelerate runs "
                         f"{accelerator.num_processes}")
    for n, p in trainable.params.items():
        if not p.requires_grad:
            raise ValueError(f"{name}: parameter {n} is listed as trainable but has requires_grad=False")
    deepspeed = _is_deepspeed(accelerator)
    params = list(trainable.params.values())
    optimizer = make_optimizer(trainable, cfg)
    start = 0
    payload = checkpoint.load() if checkpoint.exists() else None
    if payload is not None:
        missing = sorted(set(trainable.params) - set(payload["params"]))
        if missing:
            raise RuntimeError(f"{checkpoint.path}: no saved value for trainable {missing[:4]}")
        if not deepspeed:  # DeepSpeed: into its partitions once it has made them (below)
            with torch.no_grad():
                for n, p in trainable.params.items():
                    p.copy_(payload["params"][n])
            optimizer.load_state_dict(payload["optimizer"])
    if deepspeed:
        _configure_deepspeed(accelerator, plan, cfg)
    model, optimizer = accelerator.prepare(objective, optimizer)
    if payload is not None:
        if deepspeed:
            from mmmamba_bench.train.zero import load_full_state

            load_full_state(optimizer, trainable.params, payload["params"], payload["optimizer"])
        set_rng_state(payload["rng"])
        start = int(payload["step"])
        source.note_bad({int(r): why for r, why in (payload["data_position"] or {}).get("bad_rows", {}).items()})
        log.info("%s: resuming at step %d of %d from %s", name, start, cfg.steps, checkpoint.path)
    P, rank, A = plan.processes, accelerator.process_index, plan.accumulation
    # gradients are averaged over the P processes, and accelerate (DDP) or DeepSpeed divide each loss by their
    # accumulation steps: undo both, the losses are already normalised by the whole global batch
    scale = P * accelerator.gradient_accumulation_steps
    device = accelerator.device

    def save(step: int) -> None:
        if deepspeed:  # the fp32 master weights and AdamW moments, gathered from ZeRO's partitions
            from mmmamba_bench.train.zero import full_state

            weights, state = full_state(optimizer, trainable.params)
        else:
            weights = {n: p.detach().cpu().clone() for n, p in trainable.params.items()}
            state = optimizer.state_dict()
        bad = all_bad_rows(accelerator, source)  # every process takes part
        if accelerator.is_main_process:
            checkpoint.save({"step": step, "params": weights, "optimizer": state, "rng": rng_state(),
                             "data_position": {"rows_read": step * plan.global_batch,
                                               "bad_rows": {str(r): why for r, why in sorted(bad.items())}}})
        accelerator.wait_for_everyone()

    def _after_step(done: int, value: float = math.nan) -> None:
        if done % checkpoint_every == 0 or done == cfg.steps:
            save(done)
        if callback is not None:
            callback(done, value)

    losses: list[float] = []
    bar = tqdm(range(start, cfg.steps), desc=name, initial=start, total=cfg.steps,
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True, leave=False)
    for step in bar:
        lr = cfg.lr * wsd_factor(step, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [[e for e in (source.encode(source.row_at(k)) for k in plan.positions(step, rank, m))
                  if e is not None] for m in range(A)]
        denominator = accelerator.reduce(torch.tensor(float(sum(real_tokens(m) for m in micro)), device=device),
                                         "sum")
        if float(denominator) == 0:  # every row of the global batch was bad: no update, the schedule moves on
            log.warning("%s: every row of the step-%d batch was skipped (see the warnings): no update this step",
                        name, step)
            _after_step(step + 1)
            continue
        local = torch.zeros((), device=device)
        for m, items in enumerate(micro):
            batch = collate(items).to(device) if items else None
            last = m == A - 1
            accelerator.sync_gradients = last  # DeepSpeed: the accumulation boundary (it steps only there)
            with contextlib.nullcontext() if (last or deepspeed) else accelerator.no_sync(model):
                loss = model(batch, denominator)
                accelerator.backward(loss * scale)
            local = local + loss.detach().float()
        accelerator.sync_gradients = True
        gnorm = accelerator.clip_grad_norm_(params, cfg.grad_clip) if not deepspeed else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(accelerator.reduce(local, "sum"))  # the global batch's per-token mean
        if not math.isfinite(value):
            raise RuntimeError(f"{name}: non-finite loss {value} at step {step}")
        for check in loss_checks:
            if step < check.steps and not check.low <= value <= check.high:
                raise RuntimeError(f"{name}: the loss of step {step} is {value:.4g}, far outside the expected range "
                                   f"[{check.low:.4g}, {check.high:.4g}] for the first {check.steps} step(s) of this "
                                   f"stage. {check.hint}")
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2e}",
                        **({} if gnorm is None else {"gnorm": f"{float(gnorm):.3g}"}))
        _after_step(step + 1, value)
    bar.close()
    if losses:
        log.info("%s: steps %d-%d, loss %.4g -> %.4g (mean of last 10: %.4g)", name, start, cfg.steps,
                 losses[0], losses[-1], sum(losses[-10:]) / len(losses[-10:]))
    accelerator.free_memory()  # releases the engine (DeepSpeed) so the next stage can prepare its own
    return losses


def all_bad_rows(accelerator, source: RowSource) -> dict[int, str]:
    """The rows every process has skipped so far (row id -> reason; a row met by two processes counts once)."""
    mine = source.bad_rows()
    if accelerator.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    out: dict[int, str] = {}
    for part in gather_object([mine]):
        out.update(part)
    return out


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _configure_deepspeed(accelerator, plan: StepPlan, cfg: OptimConfig) -> None:
    """Fill the DeepSpeed config's batch sizes and clipping from the plan and the stage (they change per stage)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = plan.micro_batch
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["train_batch_size"] = plan.global_batch
    ds["gradient_clipping"] = cfg.grad_clip
