"""The bad-record ceiling: when the bad records one reader has seen say the epoch is past `max_bad_fraction`.

A reader (a loader slot in its worker, or a rank's loader over all its slots) knows only what it read, per shard:
good and bad records by reason. Two rules judge it against the whole epoch (docs/data.md has a worked example):

- **certain**: its bad records alone exceed `max_bad_fraction × planned`, the records the epoch plans over all ranks
  (from the index). The epoch's fraction is then past the ceiling whatever the other readers find.
- **estimate**: once it has read at least `floor` records (⌈10 / max_bad_fraction⌉: ten bad records are expected
  there at the ceiling) from at least `MIN_SHARDS` shards, its shards are a random sample of the corpus's (the epoch's
  shard order is a seeded shuffle, and a reader takes contiguous runs of it). Bad records come in clusters (a broken
  shard), so the shard, not the record, is the sampling unit: each shard read gives its bad fraction x_i (of the
  records read from it), weighted by its size in the index (a shard read in part, at the edge of a reader's range,
  still stands for the whole shard), and the standard error is that of a weighted mean over shards. The reader aborts
  when the fraction minus `Z` standard errors still exceeds the ceiling. One bad shard among k read of equal size
  gives a fraction of 1/k and a standard error of exactly 1/k, so one bad shard never triggers it, however few
  shards a reader has; a corpus whose shards are mostly bad is stopped after a few shards.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from mimo_ds.data.records import DataCeilingExceeded

GOOD = "good"
BORROWED = "borrowed"
NOT_BAD = frozenset({GOOD, BORROWED})
#: Standard errors between the estimated fraction and the ceiling before the estimate may abort.
Z = 3.0
#: Shards a reader must have read before the estimate may abort (a standard error from fewer is not to be trusted).
MIN_SHARDS = 4
#: Bad records expected at the ceiling within the floor of records read: floor = ⌈FLOOR_BAD / max_bad_fraction⌉.
FLOOR_BAD = 10
#: Shards named in a message (the worst first); the rest are counted.
NAMED_SHARDS = 8

#: Per shard name: reason → count for bad records, plus `good` (records read and used) and `borrowed`.
ShardCounts = dict[str, Counter[str]]


def bad_of(counts: Counter[str]) -> int:
    return sum(v for k, v in counts.items() if k not in NOT_BAD)


def merge(into: ShardCounts, other: dict[str, dict[str, int]]) -> ShardCounts:
    """Add `other`'s per-shard counts to `into` (returned)."""
    for shard, reasons in other.items():
        into.setdefault(shard, Counter()).update(reasons)
    return into


def bad_only(counts: ShardCounts) -> dict[str, dict[str, int]]:
    """Shard → reason → count of bad records, shards without any left out, both levels sorted."""
    out = {}
    for shard in sorted(counts):
        bad = {k: v for k, v in sorted(counts[shard].items()) if k not in NOT_BAD and v}
        if bad:
            out[shard] = bad
    return out


def describe_shards(counts: ShardCounts) -> str:
    """'shard-000005.tar (bad_json=3, invalid_utf8=1), …': the shards with bad records, the worst first."""
    bad = bad_only(counts)
    worst = sorted(bad, key=lambda s: (-sum(bad[s].values()), s))
    named = [f"{s} ({', '.join(f'{k}={v}' for k, v in bad[s].items())})" for s in worst[:NAMED_SHARDS]]
    if len(worst) > NAMED_SHARDS:
        named.append(f"and {len(worst) - NAMED_SHARDS} more shards")
    return ", ".join(named)


@dataclass(frozen=True)
class Ceiling:
    """`max_bad_fraction` for one epoch of `planned` records (all ranks); `where` names the reader in messages;
    `sizes` is each shard's record count in the index (its weight in the estimate)."""

    max_bad_fraction: float
    planned: int
    epoch: int
    where: str
    sizes: Mapping[str, int] = field(default_factory=dict, repr=False)

    @property
    def floor(self) -> int:
        """Records a reader must have read before the estimate may abort."""
        if self.max_bad_fraction <= 0:
            return 0
        return math.ceil(FLOOR_BAD / self.max_bad_fraction)

    def estimate(self, counts: ShardCounts) -> tuple[float, float, int, int, int]:
        """(fraction, standard error, shards, bad, read) over the shards in `counts` (borrowed reads left out:
        another reader owns those records and counts them)."""
        units = [(bad_of(c), bad_of(c) + c.get(GOOD, 0), name) for name, c in counts.items()]
        units = [(b, r, max(self.sizes.get(name, r), 1)) for b, r, name in units if r > 0]
        bad, read, k = sum(u[0] for u in units), sum(u[1] for u in units), len(units)
        if read == 0:
            return 0.0, math.inf, 0, 0, 0
        weight = sum(w for _, _, w in units)
        p = sum(w * b / r for b, r, w in units) / weight
        if k < 2:
            return p, math.inf, k, bad, read
        spread = sum((w * (b / r - p)) ** 2 for b, r, w in units)
        return p, math.sqrt(spread * k / (k - 1)) / weight, k, bad, read

    def judge(self, counts: ShardCounts) -> str | None:
        """None while the reader may go on; else the one-line reason to stop, naming the shards and reasons."""
        f = self.max_bad_fraction
        if f >= 1.0:
            return None
        p, se, k, bad, read = self.estimate(counts)
        if bad == 0:
            return None
        limit = f * self.planned
        head = (f"bad records exceed max_bad_fraction {f:.2%} in epoch {self.epoch}: {self.where} read {bad:,} bad "
                f"of {read:,} records in {k} shards")
        if bad > limit:
            return (f"{head}, more than {f:.2%} of the {self.planned:,} records the epoch plans over all ranks "
                    f"({math.floor(limit):,}) whatever the rest holds. Bad shards: {describe_shards(counts)}")
        if read >= self.floor and k >= MIN_SHARDS and p - Z * se > f:
            return (f"{head} ({p:.2%}; at least {p - Z * se:.2%} of the corpus at {Z:g} standard errors over "
                    f"shards, after the floor of {self.floor:,} records). Bad shards: {describe_shards(counts)}")
        return None

    def check(self, counts: ShardCounts) -> None:
        """Raise `DataCeilingExceeded` when `judge` says stop."""
        if (reason := self.judge(counts)) is not None:
            raise DataCeilingExceeded(reason)
