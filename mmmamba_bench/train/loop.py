"""The shared training loop: AdamW param groups, row-wise freezing, WSD, clipping, resumable checkpoints, progress.

Used by the teacher trainer and by every distillation stage. One call of :func:`train` runs optimizer steps
``[start, total)`` where ``start`` comes from the resumable checkpoint (0 without one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from mmmamba_bench.processor import Batch
from mmmamba_bench.train.data import BatchStream
from mmmamba_bench.train.recipe import OptimConfig
from mmmamba_bench.train.schedule import wsd_factor
from mmmamba_bench.train.state import TrainCheckpoint, rng_state, set_rng_state

log = logging.getLogger(__name__)


class RowFreeze:
    """Train only some rows of a weight: the other rows get zero gradient and are restored after every step.

    The gradient hook keeps frozen rows out of the loss gradient and out of the clipping norm; restoring the
    saved rows after the optimizer step undoes AdamW's decoupled weight decay on them, so frozen rows stay bit
    for bit what they were (the paper's stage 1 trains the g and dt rows of ``wvkqgdt`` but not q / k / v).
    """

    def __init__(self, param: nn.Parameter, trainable_rows: torch.Tensor):
        if trainable_rows.shape != param.shape[:1] or trainable_rows.dtype != torch.bool:
            raise ValueError(f"trainable_rows must be a bool mask of {param.shape[0]} rows")
        self.param = param
        self.frozen = ~trainable_rows.to(param.device)
        self.saved = param.detach()[self.frozen].clone()
        keep = trainable_rows.to(param.device, param.dtype).view(-1, *([1] * (param.dim() - 1)))
        self.handle = param.register_hook(lambda g: g * keep)

    @torch.no_grad()
    def restore(self) -> None:
        self.param[self.frozen] = self.saved

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Trainable:
    """The named parameters one run trains, plus any row-wise freezes on them."""

    params: dict[str, nn.Parameter]
    row_freezes: list[RowFreeze] = field(default_factory=list)

    def restore_frozen_rows(self) -> None:
        for rf in self.row_freezes:
            rf.restore()

    def close(self) -> None:
        for rf in self.row_freezes:
            rf.remove()


def make_optimizer(trainable: Trainable, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices / conv kernels only (biases, norm weights, dt_bias, A_log_bias: none)."""
    decay = [p for n, p in trainable.params.items() if p.dim() >= 2]
    no_decay = [p for n, p in trainable.params.items() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


StepCallback = Callable[[int, float], None]  # (step just finished, loss) -> None; may raise to stop


def train(*, name: str, trainable: Trainable, loss_fn: Callable[[Batch], torch.Tensor], stream: BatchStream,
          cfg: OptimConfig, checkpoint: TrainCheckpoint, checkpoint_every: int, device: torch.device | str = "cpu",
          progress: bool = True, callback: StepCallback | None = None) -> list[float]:
    """Run (or resume) ``cfg.steps`` optimizer steps; returns the losses of the steps run in this call.

    The resumable checkpoint (every ``checkpoint_every`` steps and at the end) holds the trainable tensors by name,
    the optimizer state, the step, the RNG states and the data position; a run that finds one continues from it.
    """
    from tqdm.auto import tqdm

    for n, p in trainable.params.items():
        if not p.requires_grad:
            raise ValueError(f"{name}: parameter {n} is listed as trainable but has requires_grad=False")
    optimizer = make_optimizer(trainable, cfg)
    start = 0
    if checkpoint.exists():
        payload = checkpoint.load()
        with torch.no_grad():
            missing = sorted(set(trainable.params) - set(payload["params"]))
            if missing:
                raise RuntimeError(f"{checkpoint.path}: no saved value for trainable {missing[:4]}")
            for n, p in trainable.params.items():
                p.copy_(payload["params"][n])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        start = int(payload["step"])
        log.info("%s: resuming at step %d of %d from %s", name, start, cfg.steps, checkpoint.path)

    def save(step: int) -> None:
        checkpoint.save({"step": step, "params": {n: p.detach().cpu().clone() for n, p in trainable.params.items()},
                         "optimizer": optimizer.state_dict(), "rng": rng_state(),
                         "data_position": stream.position(step)})

    params = list(trainable.params.values())
    losses: list[float] = []
    bar = tqdm(range(start, cfg.steps), desc=name, initial=start, total=cfg.steps, disable=not progress,
               dynamic_ncols=True, leave=False)
    for step in bar:
        lr = cfg.lr * wsd_factor(step, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(stream.batch(step).to(device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        trainable.restore_frozen_rows()
        value = float(loss.detach())
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2e}", gnorm=f"{float(gnorm):.3g}")
        done = step + 1
        if done % checkpoint_every == 0 or done == cfg.steps:
            save(done)
        if callback is not None:
            callback(done, value)
    bar.close()
    if losses:
        log.info("%s: steps %d-%d, loss %.4g -> %.4g (mean of last 10: %.4g)", name, start, cfg.steps,
                 losses[0], losses[-1], sum(losses[-10:]) / len(losses[-10:]))
    if not math.isfinite(sum(losses)):
        raise RuntimeError(f"{name}: training diverged")
    return losses
