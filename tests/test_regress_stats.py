"""The statistics of `mmmamba-bench regress` on hand-worked examples and a small coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmmamba_bench.regress.stats import (clusters_of, holm, mcnemar_exact, minimum_detectable_effect,
                                         paired_bootstrap, paired_bootstrap_mean)


def test_mcnemar_exact_by_hand():
    # 12 discordant pairs, 2 right only in the baseline, 10 only in the candidate:
    # P(X <= 2 | Binomial(12, 1/2)) = (1 + 12 + 66) / 4096, two-sided twice that
    base = [1, 1] + [0] * 10 + [1] * 5 + [0] * 3
    cand = [0, 0] + [1] * 10 + [1] * 5 + [0] * 3
    b, c, p = mcnemar_exact(base, cand)
    assert (b, c) == (2, 10)
    assert p == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == (0, 0, 1.0)
    assert mcnemar_exact([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1])[2] == 1.0  # b = c: capped at 1
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_holm_orders_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.9]) == [1.0, 1.0]


def test_minimum_detectable_effect():
    assert minimum_detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)


def test_bootstrap_resamples_whole_clusters():
    # MME-style pairs: the metric is undefined on half a pair, so a resample that splits a pair would raise
    keys = [f"img{i // 2}" for i in range(20)]
    assert clusters_of(keys)[3] == [6, 7]

    def pairs_both_right(records):
        by = {}
        for k, ok in records:
            by.setdefault(k, []).append(ok)
        if any(len(v) % 2 for v in by.values()):
            raise AssertionError("a pair was split")
        return sum(all(v[i:i + 2]) for v in by.values() for i in range(0, len(v), 2)) / sum(len(v) // 2 for v in by.values())

    base = [(k, i % 3 != 0) for i, k in enumerate(keys)]
    cand = [(k, True) for k in keys]
    res = paired_bootstrap(base, cand, keys, pairs_both_right, resamples=500)
    assert res.clusters == 10 and res.difference == pytest.approx(1.0 - pairs_both_right(base))
    assert res.ci_low <= res.difference <= res.ci_high


def test_bootstrap_interval_covers_the_truth_about_95_percent():
    """Paired 0/1 outcomes with a known difference of accuracy 0.05: over repeated experiments the 95% interval
    holds the true difference in about 95% of them."""
    rng = np.random.default_rng(7)
    n, sims, hits = 150, 120, 0
    for s in range(sims):
        u = rng.random(n)
        base = (u < 0.60).astype(float)  # accuracy 0.60
        cand = (u < 0.65).astype(float)  # accuracy 0.65, strongly paired with the baseline
        res = paired_bootstrap(list(base), list(cand), list(range(n)), lambda r: float(np.mean(r)),
                               resamples=400, seed=s)
        hits += res.ci_low <= 0.05 <= res.ci_high
    coverage = hits / sims
    assert 0.88 <= coverage <= 0.995, coverage  # 95% +- about two binomial standard errors of 120 experiments


def test_identical_runs_show_no_difference():
    base = [1.0, 0.0, 1.0, 1.0, 0.0] * 20
    res = paired_bootstrap(base, list(base), list(range(len(base))), lambda r: sum(r) / len(r), resamples=200)
    assert res.difference == 0 and res.ci_low == res.ci_high == 0 and res.p_value == 1.0
    assert math.isclose(res.standard_error, 0.0)


def test_vectorised_mean_bootstrap_equals_the_general_one():
    """paired_bootstrap_mean takes the general bootstrap's draws: same interval, p-value and SE for a mean, with
    clusters of unequal size and non-binary values (a VQA soft accuracy)."""
    rng = np.random.default_rng(3)
    n = 90
    base = list(rng.choice([0.0, 0.3, 0.6, 1.0], size=n))
    cand = [min(1.0, b + rng.choice([-0.3, 0.0, 0.0, 0.3])) for b in base]
    keys = [i // 3 if i < 60 else i for i in range(n)]  # 20 clusters of 3, then 30 singletons
    slow = paired_bootstrap(base, cand, keys, lambda r: float(np.mean(r)), resamples=1500, seed=11)
    fast = paired_bootstrap_mean(base, cand, keys, resamples=1500, seed=11)
    assert fast.clusters == slow.clusters == 50
    for field in ("baseline", "candidate", "difference", "ci_low", "ci_high", "p_value", "standard_error"):
        assert math.isclose(getattr(fast, field), getattr(slow, field), rel_tol=1e-9, abs_tol=1e-12), field
    assert slow.ci_low < slow.difference < slow.ci_high and slow.standard_error > 0
