"""Runs of one arm over seeds → mean ± standard deviation per metric.

An *arm* is one training configuration (objective, λ, where it starts) and a *seed* one repetition of it with
another data order and initialisation. `mimo-ds demo --seeds N` tags each of its runs with both (`mimo.arm`,
`mimo.seed`); any run can be tagged the same way (`--set 'tracking.tags={mimo.arm: xlco, mimo.seed: "3"}'`), and
`mimo-ds compare` then reports the arm once, over its seeds.

The spread is the sample standard deviation (Bessel's n − 1, numpy's `std(ddof=1)`): the seeds are a sample of
the runs one could have made, and the question a reader asks is whether two arms differ by more than that. With a
single value it is undefined, `None` (shown "n/a"), never 0: one run says nothing about the spread, and the
untrained start, evaluated once and deterministic, is such a case.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TAG_ARM = "mimo.arm"
TAG_SEED = "mimo.seed"
NO_SPREAD = "n/a"


@dataclass(frozen=True)
class Stat:
    """A metric over an arm's seeds: the mean, the sample standard deviation (None for one value) and the count."""

    mean: float
    std: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation of `values` (at least one)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        return Stat(math.nan, math.nan if len(values) > 1 else None, len(values))
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Stat]:
    """metric → its Stat over the seeds' metric dicts; a metric some seed did not log is aggregated over the seeds
    that did (its `n` says how many), in the order metrics first appear."""
    names = list(dict.fromkeys(name for metrics in per_seed for name in metrics))
    return {name: mean_std([metrics[name] for metrics in per_seed if name in metrics]) for name in names}


def separated(a: Stat, b: Stat) -> bool | None:
    """Whether `a` and `b` differ by more than their spreads added, |mean_a − mean_b| > s_a + s_b: their ± 1 s.d.
    error bars do not overlap, the rule the demo's reading claims a difference by. A Stat of one value has no spread
    to add; it counts as exact when the other has one (the untrained start, evaluated once, is deterministic) and
    leaves the question open (None) when neither has one: two single runs say nothing about seed noise."""
    if a.std is None and b.std is None:
        return None
    if math.isnan(a.mean) or math.isnan(b.mean):
        return None
    return abs(a.mean - b.mean) > (a.std or 0.0) + (b.std or 0.0)


def format_stat(stat: Stat | None, digits: int = 4) -> str:
    """`0.5540 ± 0.0123`; one value: `0.5540 ± n/a`; a metric not logged: `–`."""
    if stat is None:
        return "–"
    if math.isnan(stat.mean):
        return "nan"
    spread = NO_SPREAD if stat.std is None else f"{stat.std:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {spread}"
