"""Paired statistics for comparing two evaluation runs on the same documents (pure Python + NumPy).

- :func:`paired_bootstrap`: resample whole clusters of documents (an MME image pair, a POPE image, an MMBench circular
  group; a single document otherwise) with replacement, the same draw for both runs, and recompute the task's
  headline metric on each side: the difference's bootstrap distribution gives a percentile 95% interval, a two-sided
  p-value and its standard error.
- :func:`mcnemar_exact`: the exact (binomial) McNemar test for a 0/1 per-document metric.
- :func:`holm`: Holm's step-down adjustment of the p-values of a run's tasks (family-wise error rate).
- :func:`minimum_detectable_effect`: the smallest true difference detected with 80% power at this sample size,
  ``(z_{1-alpha/2} + z_{power}) * SE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Hashable, Sequence

import numpy as np

Metric = Callable[[Sequence[object]], float]  # a task's headline metric over a list of per-document records


@dataclass(frozen=True)
class BootstrapResult:
    baseline: float  # the metric on all documents
    candidate: float
    difference: float  # candidate - baseline
    ci_low: float  # percentile interval of the difference
    ci_high: float
    p_value: float  # two-sided: 2 * min(P(d* <= 0), P(d* >= 0)), at least 1 / resamples
    standard_error: float  # standard deviation of the bootstrap differences
    resamples: int
    clusters: int


TIE = 1e-12  # bootstrap differences this close to 0 are 0 (the same sum taken in another order)


def two_sided_p(diffs: np.ndarray) -> float:
    """2 * min(P(d* <= 0), P(d* >= 0)) over the bootstrap differences, rounding noise around 0 counted as 0."""
    return 2 * min(float(np.mean(diffs <= TIE)), float(np.mean(diffs >= -TIE)))


def _check_paired(name: str, baseline: Sequence[object], candidate: Sequence[object],
                  cluster_keys: Sequence[Hashable], resamples: int) -> None:
    n = len(baseline)
    if n == 0 or len(candidate) != n or len(cluster_keys) != n:
        raise ValueError(f"{name}: need equally many records (baseline {n}, candidate {len(candidate)}, "
                         f"clusters {len(cluster_keys)}), at least one")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")


def _summary(diffs: np.ndarray, base_value: float, cand_value: float, clusters: int,
             confidence: float) -> BootstrapResult:
    """The bootstrap differences ``diffs`` [resamples] -> percentile interval, p-value (at least 1 / resamples), SE."""
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(baseline=base_value, candidate=cand_value, difference=cand_value - base_value,
                           ci_low=float(low), ci_high=float(high),
                           p_value=min(1.0, max(two_sided_p(diffs), 1.0 / len(diffs))),
                           standard_error=float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                           resamples=len(diffs), clusters=clusters)


def clusters_of(keys: Sequence[Hashable]) -> list[list[int]]:
    """Document indices grouped by cluster key, in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def paired_bootstrap(baseline: Sequence[object], candidate: Sequence[object], cluster_keys: Sequence[Hashable],
                     metric: Metric, *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95,
                     relabel: Callable[[object, int], object] | None = None) -> BootstrapResult:
    """Paired cluster bootstrap of ``metric(candidate) - metric(baseline)``.

    ``baseline[i]`` and ``candidate[i]`` are the two runs' records of document i; ``cluster_keys[i]`` its cluster.
    ``relabel(record, k)``: a copy of a record for the k-th cluster drawn into a resample, for metrics that group
    records by an id (MME's image pairs): a cluster drawn twice must count as two clusters, not one of four records.
    A resample whose metric cannot be computed (e.g. a POPE split drawn empty) is drawn again.
    """
    _check_paired("paired_bootstrap", baseline, candidate, cluster_keys, resamples)
    groups = clusters_of(cluster_keys)
    rng = np.random.default_rng(seed)
    base_value, cand_value = metric(list(baseline)), metric(list(candidate))
    if all(b == c for b, c in zip(baseline, candidate)):
        # Identical records: every resample's difference is exactly 0 (the metric is a function of the records).
        return BootstrapResult(baseline=base_value, candidate=cand_value, difference=cand_value - base_value,
                               ci_low=0.0, ci_high=0.0, p_value=1.0, standard_error=0.0, resamples=resamples,
                               clusters=len(groups))
    def difference(picks: np.ndarray) -> float:
        if relabel is None:
            idx = [i for g in picks for i in groups[g]]
            cand, base = [candidate[i] for i in idx], [baseline[i] for i in idx]
        else:
            cand = [relabel(candidate[i], k) for k, g in enumerate(picks) for i in groups[g]]
            base = [relabel(baseline[i], k) for k, g in enumerate(picks) for i in groups[g]]
        return metric(cand) - metric(base)

    diffs = resample_clusters(len(groups), difference, resamples, rng, "paired_bootstrap")
    return _summary(diffs, base_value, cand_value, len(groups), confidence)


def resample_clusters(n_clusters: int, statistic: Callable[[np.ndarray], float], resamples: int,
                      rng: np.random.Generator, name: str) -> np.ndarray:
    """[resamples] values of ``statistic(picks)``, ``picks`` [n_clusters] cluster indices drawn with replacement.

    The draws every cluster bootstrap of the project shares: the same rng gives the same resamples. A resample whose
    statistic cannot be computed (raises ValueError / ZeroDivisionError, e.g. a POPE split drawn empty) is drawn
    again, at most 20 x resamples draws in all.
    """
    out = np.empty(resamples)
    done = attempts = 0
    while done < resamples:
        attempts += 1
        if attempts > 20 * resamples:
            raise ValueError(f"{name}: the metric fails on most resamples (too few clusters?)")
        picks = rng.integers(0, n_clusters, size=n_clusters)
        try:
            out[done] = statistic(picks)
        except (ValueError, ZeroDivisionError):
            continue
        done += 1
    return out


def paired_bootstrap_mean(baseline: Sequence[float], candidate: Sequence[float], cluster_keys: Sequence[Hashable],
                          *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """:func:`paired_bootstrap` for a metric that is the plain mean of per-document numbers, vectorised: a resample's
    mean is (sum of its clusters' sums) / (sum of its clusters' sizes). Same draws as :func:`paired_bootstrap`
    with the same seed, so both give the same interval for a mean."""
    _check_paired("paired_bootstrap_mean", baseline, candidate, cluster_keys, resamples)
    groups = clusters_of(cluster_keys)
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    size = np.array([len(g) for g in groups], dtype=np.float64)  # [G]
    delta = np.array([float(np.sum(c[g]) - np.sum(b[g])) for g in groups])  # [G] per-cluster sum of differences
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, 1000):  # the draws of paired_bootstrap, in blocks of 1000 resamples
        picks = np.stack([rng.integers(0, len(groups), size=len(groups))
                          for _ in range(min(1000, resamples - start))])  # [r, G]
        diffs[start:start + len(picks)] = delta[picks].sum(1) / size[picks].sum(1)
    return _summary(diffs, float(b.mean()), float(c.mean()), len(groups), confidence)


def mcnemar_exact(baseline: Sequence[int | bool], candidate: Sequence[int | bool]) -> tuple[int, int, float]:
    """Exact McNemar test of paired 0/1 outcomes: (b, c, two-sided p), with b = right only in the baseline,
    c = right only in the candidate; p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))."""
    if len(baseline) != len(candidate):
        raise ValueError("mcnemar_exact: the runs have different numbers of documents")
    b = sum(1 for x, y in zip(baseline, candidate) if _bit(x) and not _bit(y))
    c = sum(1 for x, y in zip(baseline, candidate) if not _bit(x) and _bit(y))
    n = b + c
    if n == 0:
        return b, c, 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return b, c, min(1.0, 2.0 * tail)


def _bit(x: int | bool | float) -> bool:
    if x not in (0, 1, True, False):
        raise ValueError(f"mcnemar_exact: outcomes must be 0/1, found {x!r}")
    return bool(x)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest is multiplied by (m - i), made monotone, capped
    at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(standard_error: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided test at ``alpha`` detects with ``power``, given the difference's SE."""
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * standard_error
