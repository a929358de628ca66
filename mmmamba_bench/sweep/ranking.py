"""Layer utilities with uncertainty, for the attention-placement search (``mmmamba-bench place``); pure Python + NumPy.

Inputs are held-out KL divergences, one per (layout, seed): the all-linear student and, for each candidate layer i,
the student that keeps only layer i as attention, each distilled with the same recipe and seed (so with the same
seeding and the same batches). A layer's **utility** at a seed is the KL the layer removes,
``u_i(s) = KL_linear(s) - KL_i(s)`` (paired by seed: the seed's shared data order and seeding cancel out).

- :func:`utilities`: per layer the mean of ``u_i(s)`` over seeds and a Student-t interval over seeds,
  ``mean +- t_{1-alpha/2, n-1} * sd / sqrt(n)`` (sd: the sample standard deviation of the n per-seed utilities).
  Its width is the seed-to-seed spread of a short distillation; the held-out set is fixed and shared by every run.
- :func:`adjacent_comparisons`: each layer against the next one down the ranking, the same t interval on the paired
  per-seed differences ``u_a(s) - u_b(s)``; "resolved" only when that interval excludes 0.
- :func:`selection_frequencies`: the seed bootstrap: draw n seeds with replacement (one draw shared by every layer,
  keeping the pairing), recompute each layer's mean utility, apply the same selection rule as the proposal, and count
  how often each layer is selected and ranked first, and how often each set is selected. With n seeds there are only
  C(2n-1, n) distinct draws (10 for 3 seeds), so the frequencies are coarse; they say how much the proposal depends
  on which seeds were run, not more.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Selection = Callable[[Mapping[int, float]], tuple[int, ...]]  # {layer: utility} -> the selected layers


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom: bisection on the CDF, the
    density integrated by Simpson's rule (t_{0.975, 2} = 4.303, t_{0.975, 1} = 12.706)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # P(T <= x) for x >= 0
        n = 4000  # even
        h = x / n
        ys = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """Mean of ``values`` with a Student-t interval over them (None with fewer than two values)."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    sd: float | None
    values: tuple[float, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("t_interval: no values")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return Interval(mean, None, None, None, vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = t_quantile(1 - (1 - confidence) / 2, len(vals) - 1) * sd / math.sqrt(len(vals))
    return Interval(mean, mean - half, mean + half, sd, vals)


@dataclass(frozen=True)
class LayerUtility:
    layer: int
    utility: Interval  # KL_linear(s) - KL_layer(s) over seeds
    seeds: tuple[int, ...]


def paired_seeds(kl: Mapping[str, Mapping[int, float]], baseline: str, names: Mapping[int, str]) -> tuple[int, ...]:
    """The seeds every layout (the baseline and every layer's) has a result for."""
    common = set(kl.get(baseline, {}))
    for name in names.values():
        common &= set(kl.get(name, {}))
    return tuple(sorted(common))


def utilities(kl: Mapping[str, Mapping[int, float]], baseline: str, names: Mapping[int, str],
              confidence: float = 0.95) -> list[LayerUtility]:
    """Each layer's utility (``names``: layer -> its layout's name in ``kl``), ranked: highest mean first (ties: the
    lower layer first). Only seeds with a result for every layout are used."""
    seeds = paired_seeds(kl, baseline, names)
    if not seeds:
        raise ValueError("no seed has a result for every layout")
    out = [LayerUtility(layer, t_interval([kl[baseline][s] - kl[name][s] for s in seeds], confidence), seeds)
           for layer, name in names.items()]
    return sorted(out, key=lambda u: (-u.utility.mean, u.layer))


@dataclass(frozen=True)
class Comparison:
    better: int  # the layer ranked higher
    worse: int
    difference: Interval  # u_better(s) - u_worse(s) over seeds

    @property
    def resolved(self) -> bool:
        return self.difference.excludes_zero


def compare(a: LayerUtility, b: LayerUtility, confidence: float = 0.95) -> Comparison:
    """Layer ``a`` against layer ``b``: the t interval of ``u_a(s) - u_b(s)`` over their common seeds."""
    if a.seeds != b.seeds:
        raise ValueError(f"layers {a.layer} and {b.layer} were ranked on different seeds")
    diffs = [x - y for x, y in zip(a.utility.values, b.utility.values)]
    return Comparison(a.layer, b.layer, t_interval(diffs, confidence))


def adjacent_comparisons(ranked: Sequence[LayerUtility], confidence: float = 0.95) -> list[Comparison]:
    """Each layer against the next one down the ranking (paired by seed)."""
    return [compare(a, b, confidence) for a, b in zip(ranked, ranked[1:])]


@dataclass(frozen=True)
class Frequencies:
    resamples: int
    selected: dict[int, float]  # layer -> P(selected)
    first: dict[int, float]  # layer -> P(ranked first)
    sets: list[tuple[tuple[int, ...], float]]  # selected sets, most frequent first


def selection_frequencies(ranked: Sequence[LayerUtility], select: Selection, resamples: int = 4000,
                          seed: int = 0) -> Frequencies:
    """The seed bootstrap of the selection (see the module docstring)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    layers = [u.layer for u in ranked]
    table = np.array([u.utility.values for u in ranked])  # [layers, seeds]
    n = table.shape[1]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))  # [resamples, n]: the seeds drawn, shared by every layer
    means = table[:, picks].mean(axis=2)  # [layers, resamples]
    selected: Counter[int] = Counter()
    first: Counter[int] = Counter()
    sets: Counter[tuple[int, ...]] = Counter()
    for r in range(resamples):
        draw = {layer: float(means[j, r]) for j, layer in enumerate(layers)}
        chosen = tuple(sorted(select(draw)))
        selected.update(chosen)
        sets[chosen] += 1
        first[min(layers, key=lambda x: (-draw[x], x))] += 1
    return Frequencies(resamples, {x: selected[x] / resamples for x in layers},
                       {x: first[x] / resamples for x in layers},
                       [(s, c / resamples) for s, c in sorted(sets.items(), key=lambda kv: (-kv[1], kv[0]))])
