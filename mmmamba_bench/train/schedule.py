"""The warmup-stable-decay (WSD) learning-rate schedule of the paper's Sec. 5.1 (10% warm-up, 10% decay)."""

from __future__ import annotations


def wsd_factor(step: int, total: int, warmup_frac: float = 0.1, decay_frac: float = 0.1) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based) of ``total``.

    - warm-up: the first ``W = round(warmup_frac * total)`` steps ramp linearly, (step + 1) / W;
    - stable: 1.0;
    - decay: the last ``D = round(decay_frac * total)`` steps fall linearly, (total - step) / (D + 1), from just
      below the peak to 1 / (D + 1) of it (no step is wasted at zero).
    """
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step {step} is outside [0, {total})")
    warm = round(warmup_frac * total)
    decay = round(decay_frac * total)
    if step < warm:
        return (step + 1) / warm
    if step >= total - decay:
        return (total - step) / (decay + 1)
    return 1.0
