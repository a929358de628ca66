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


class KeepRows(nn.Module):
    """A parametrization that trains only some rows of a weight: the frozen rows always read a saved copy.

    ``weight = where(trainable_rows, original, saved)``: the frozen rows get no gradient (nor a share of the clipping
    norm) and whatever the optimizer does to ``original``'s frozen rows (AdamW's decoupled weight decay) never reaches
    the weight the model uses, so they stay bit for bit what they were. It works unchanged under DDP and DeepSpeed
    ZeRO, which keep their own fp32 copy of every trained parameter (restoring rows after each step could not reach
    that copy). The paper's stage 1 trains the g and dt rows of ``wvkqgdt`` but not q / k / v.
    """

    def __init__(self, weight: torch.Tensor, trainable_rows: torch.Tensor):
        super().__init__()
        if trainable_rows.shape != weight.shape[:1] or trainable_rows.dtype != torch.bool:
            raise ValueError(f"trainable_rows must be a bool mask of {weight.shape[0]} rows")
        shape = (-1,) + (1,) * (weight.dim() - 1)
        self.register_buffer("keep", trainable_rows.to(weight.device).view(shape), persistent=False)
        self.register_buffer("saved", weight.detach().clone(), persistent=False)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, original, self.saved.to(original.dtype))


@dataclass
class RowMask:
    """A :class:`KeepRows` parametrization installed on ``module.<name>``."""

    module: nn.Module
    name: str
    trainable_rows: torch.Tensor  # [rows] bool

    @property
    def frozen_numel(self) -> int:
        """Elements of the weight that do not train."""
        weight = getattr(self.module.parametrizations, self.name).original
        return int((~self.trainable_rows).sum()) * weight[0].numel()

    @staticmethod
    def install(module: nn.Module, name: str, trainable_rows: torch.Tensor) -> tuple["RowMask", nn.Parameter]:
        """Parametrize ``module.<name>``; returns the mask and the parameter that now trains (the original)."""
        from torch.nn.utils import parametrize

        parametrize.register_parametrization(module, name, KeepRows(getattr(module, name), trainable_rows))
        return RowMask(module, name, trainable_rows), getattr(module.parametrizations, name).original

    def remove(self) -> None:
        """Back to a plain parameter holding the trained rows and the exact frozen ones."""
        from torch.nn.utils import parametrize

        if parametrize.is_parametrized(self.module, self.name):
            parametrize.remove_parametrizations(self.module, self.name, leave_parametrized=True)


@dataclass
class Trainable:
    """The named parameters one run trains (by their released names), plus any row masks on them."""

    params: dict[str, nn.Parameter]
    row_masks: list[RowMask] = field(default_factory=list)

    def close(self) -> None:
        """Remove the row masks (the model then holds plain parameters again, ready to save)."""
        for rm in self.row_masks:
            rm.remove()


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
