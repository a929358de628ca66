"""The paper's orderings among a sweep's configurations, and whether our intervals support them.

An :class:`Ordering` says which of two configurations the paper found better (by its own numbers: the mean of the
percentage columns POPE, TQA and SQA-I of ``reports/paper/ablations.csv``, MME left out as in our quality score; a
setting the paper reports as "-", Table 3's undistilled "none", counts as the worse). Which pairs are judged
follows each table's claim:

- Table 3 (stages): all three stages beat every subset.
- Table 4 (initialisation): scratch < inherit W_QKV < inherit W_QKV + mimic, adjacent pairs.
- Table 5 (number of attention layers): more attention layers are better, adjacent pairs in K.
- Table 6 (placement): head-interleaved beats every other placement.

:func:`verdict` reads the interval of the paired difference (paper's better minus paper's worse, our scores on the
same documents): entirely above 0 -> ``"holds"``, entirely below -> ``"reversed"``, otherwise ``"not resolved:
intervals overlap"`` (the difference is within what resampling the documents produces: no ordering is claimed).
:func:`judge` widens every interval for the number of orderings judged together (Bonferroni: ``1 - alpha / m``), so
that all verdicts of a report hold jointly at level ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mmmamba_bench.sweep.configs import SweepConfig

HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved: intervals overlap"
PAPER_MEAN_COLUMNS = ("POPE", "TQA", "SQA-I")
TABLE4_CHAIN = ("scratch", "inherit W_QKV", "inherit W_QKV + mimic")
TABLE5_LADDER = ("0", "1", "2", "4", "8", "32 (HoVLE)")
TABLE3_FULL = "S1+S2+S3"
TABLE6_BEST = "head-interleaved"
CLAIMS = {3: "all three stages beat a subset", 4: "inheriting and mimicking the attention weights helps",
          5: "more attention layers are better", 6: "head-interleaved is the best placement"}


def verdict(ci_low: float, ci_high: float) -> str:
    """The verdict on an ordering from the interval of (paper's better - paper's worse)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)) or ci_low > ci_high:
        raise ValueError(f"not an interval: [{ci_low}, {ci_high}]")
    if ci_low > 0:
        return HOLDS
    if ci_high < 0:
        return REVERSED
    return NOT_RESOLVED


def paper_mean(scores: Mapping[str, float]) -> float:
    """Mean of the paper's POPE, TQA and SQA-I (NaN when one is not reported)."""
    values = [scores.get(c, math.nan) for c in PAPER_MEAN_COLUMNS]
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


@dataclass(frozen=True)
class Ordering:
    """The paper's ``better`` configuration beats ``worse`` (config names), with the paper's numbers."""

    table: int
    better: str
    worse: str
    better_setting: str
    worse_setting: str
    paper_better: float  # paper_mean of the better row (NaN: not reported)
    paper_worse: float

    @property
    def text(self) -> str:
        return f"Table {self.table}: {self.better_setting} > {self.worse_setting}"


def _claim_pairs(table: int, settings: Sequence[str]) -> list[tuple[str, str]]:
    """The setting pairs a table's claim compares, among ``settings`` present."""
    present = set(settings)
    if table == 3:
        return [(TABLE3_FULL, s) for s in settings if s != TABLE3_FULL] if TABLE3_FULL in present else []
    if table == 6:
        return [(TABLE6_BEST, s) for s in settings if s != TABLE6_BEST] if TABLE6_BEST in present else []
    chain = [s for s in (TABLE4_CHAIN if table == 4 else TABLE5_LADDER) if s in present]
    return [(chain[i + 1], chain[i]) for i in range(len(chain) - 1)]


def paper_orderings(configs: Sequence[SweepConfig], paper_rows: Mapping[tuple[int, str], Mapping[str, float]]
                    ) -> list[Ordering]:
    """The orderings to judge among ``configs`` (their :attr:`~SweepConfig.paper` rows), directed by the paper's
    numbers ``paper_rows[(table, setting)]``. Two settings built as one configuration are not compared, and a pair of
    configurations is judged once."""
    by_setting: dict[tuple[int, str], str] = {}
    for cfg in configs:
        for ref in cfg.paper:
            by_setting.setdefault((ref.table, ref.setting), cfg.name)
    out: list[Ordering] = []
    for table in sorted({t for t, _ in by_setting}):
        settings = [s for t, s in by_setting if t == table]
        for a, b in _claim_pairs(table, settings):
            ca, cb = by_setting[(table, a)], by_setting[(table, b)]
            if ca == cb or any({o.better, o.worse} == {ca, cb} for o in out):
                continue  # two settings built as one configuration, or a pair already judged
            ma, mb = paper_mean(paper_rows.get((table, a), {})), paper_mean(paper_rows.get((table, b), {}))
            if math.isnan(mb) or (not math.isnan(ma) and ma >= mb):
                out.append(Ordering(table, ca, cb, a, b, ma, mb))
            else:  # the paper's numbers order this pair the other way
                out.append(Ordering(table, cb, ca, b, a, mb, ma))
    return out


@dataclass(frozen=True)
class Judgement:
    ordering: Ordering
    difference: float  # ours: better - worse
    ci_low: float
    ci_high: float
    confidence: float
    verdict: str


def judge(orderings: Sequence[Ordering], difference: Callable[[str, str, float], tuple[float, float, float]],
          alpha: float = 0.05) -> list[Judgement]:
    """Judge every ordering; ``difference(better, worse, confidence)`` -> (difference, interval low, high), e.g. a
    paired bootstrap. Intervals at ``1 - alpha / len(orderings)`` (Bonferroni)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    confidence = 1 - alpha / max(1, len(orderings))
    out = []
    for o in orderings:
        d, low, high = difference(o.better, o.worse, confidence)
        out.append(Judgement(o, d, low, high, confidence, verdict(low, high)))
    return out
