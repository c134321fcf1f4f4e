"""Reading one slot's records: shards in epoch order, ordinals, bad-record attribution, borrowing, resampling.

A slot (`mimo_ds.data.plan`) owns an ordinal range; its reader yields the good records of that range in epoch order,
through a seeded shuffle buffer, so a slot's stream is a function of (seed, epoch, slot) alone.

A record that cannot be used is skipped and counted by shard and reason (`mimo_ds.data.records`), each exactly once
over all slots (`SlotReader.read_shard` says who counts what). When a slot is short of records because of them, it
borrows the records after its range (counted as `borrowed`), so the batch count holds. A shard whose size or sha256
differs from the index's is not read (its records count as `size_mismatch` / `hash_mismatch`). The slot's ceiling
(`mimo_ds.data.ceiling`) judges the counts after every shard.

Resampled mode draws shards with replacement (seeded per epoch and slot) instead of reading the slot's range.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator

from mimo_ds.data.ceiling import BORROWED, GOOD, Ceiling, ShardCounts, describe_shards
from mimo_ds.data.plan import EpochPlan
from mimo_ds.data.records import MISSING_SHARD, TRUNCATED_SHARD, UNINDEXED, BadRecord, DataCeilingExceeded, check_member
from mimo_ds.data.shards import ShardInfo, ShardReadError, check_shard_file, iter_shard

#: (write position, record): what a slot's reader yields, and what collation receives.
Positioned = tuple[int, dict[str, Any]]


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle buffer: memory `size` records, output a function of the input order and the rng only."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class SlotReader:
    """Reads the records of the slots of `plan`; `resampled` draws shards instead of reading ranges."""

    def __init__(self, plan: EpochPlan, shuffle_buffer: int, resampled: bool) -> None:
        self.plan = plan
        self.index = plan.index
        self.kind = plan.index.record_kind
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.select = set(plan.languages)

    def judge(self, key: str, record: dict[str, Any] | None, bad: BadRecord | None) -> tuple[bool, BadRecord | None]:
        """(eligible, bad): whether the member takes an ordinal, and why it cannot be used (None: usable)."""
        if bad is None:
            known = self.plan.languages if self.kind.parallel else self.index.languages
            bad = check_member(key, record, self.kind, known)
        if not self.plan.subset:
            return True, bad
        # A tagged record in an unselected language takes no ordinal; an unreadable one neither (its language is
        # unknown).
        lang = record.get("lang") if isinstance(record, dict) else None
        return lang in self.select, bad

    def read_shard(
        self, shard: ShardInfo, base: int, n: int, lo: int, hi: int, counts: ShardCounts
    ) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
        """(ordinal, write position, record or None when bad) for each eligible member of `shard`.

        `base` is the shard's first ordinal and `n` its eligible count from the index. Bad records are counted when
        this slot ([lo, hi)) owns them, so that each is counted once over all slots: an eligible one by the slot
        holding its ordinal; one taking no ordinal by the slot holding the ordinal before it (slot 0 for none);
        records lost to a broken, short, missing or altered shard by the slots holding their ordinals.
        """
        tally = counts[shard.name]
        c = base
        if (altered := check_shard_file(self.index.path(shard), shard, full=True)) is not None:
            if (owned := min(hi, base + n) - max(lo, c)) > 0:
                tally[altered.reason] += owned
            return
        try:
            for member in iter_shard(self.index.path(shard)):
                eligible, bad = self.judge(member.key, member.record, member.bad)
                if eligible and c >= base + n:
                    eligible, bad = False, BadRecord(UNINDEXED, f"{shard.name} holds more records than its index")
                if eligible:
                    if bad is not None and lo <= c < hi:
                        tally[bad.reason] += 1
                    yield c, shard.start + member.ordinal, (None if bad else member.record)
                    c += 1
                elif bad is not None and (lo < c <= hi or lo == c == 0):
                    tally[bad.reason] += 1
        except ShardReadError as exc:
            lost = MISSING_SHARD if isinstance(exc.cause, FileNotFoundError) else TRUNCATED_SHARD
        else:
            lost = TRUNCATED_SHARD
        if (owned := min(hi, base + n) - max(lo, c)) > 0:
            tally[lost] += owned

    def slot_records(self, slot: int, epoch: int, counts: ShardCounts, ceiling: Ceiling) -> Iterator[Positioned]:
        """The slot's good records for `epoch`, shuffled; then (ranged mode) borrowed ones for as long as asked."""
        rng = random.Random(f"{self.plan.seed}/{epoch}/{slot}/samples")
        if self.resampled:
            yield from shuffled(self._resampled(slot, epoch, counts, ceiling), self.shuffle_buffer, rng)
            return
        order = self.plan.shard_order(epoch)
        lo, hi = self.plan.slot_range(slot)
        yield from shuffled(self._range(order, lo, hi, counts, ceiling), self.shuffle_buffer, rng)
        yield from self._borrowed(order, hi, counts, ceiling)

    def _range(self, order: list[int], lo: int, hi: int, counts: ShardCounts, ceiling: Ceiling) -> Iterator[Positioned]:
        """The good records with ordinals in [lo, hi), in epoch order; reads on to the next eligible record after
        them so the bad records in between are counted."""
        start = 0
        for i in order:
            shard, n = self.index.shards[i], self.plan.eligible[i]
            if lo > 0 and start + n <= lo:
                start += n
                continue
            done = False
            for c, pos, record in self.read_shard(shard, start, n, lo, hi, counts):
                if c >= hi:
                    done = True
                    break
                if record is not None and c >= lo:
                    counts[shard.name][GOOD] += 1
                    yield pos, record
            ceiling.check(counts)
            if done:
                return
            start += n

    def _borrowed(self, order: list[int], after: int, counts: ShardCounts, ceiling: Ceiling) -> Iterator[Positioned]:
        """Good records from ordinal `after` on, cycling through the epoch: only read when bad records left a slot
        short. Their bad records are other slots' to count."""
        while True:
            found = False
            start = 0
            for i in order:
                shard, n = self.index.shards[i], self.plan.eligible[i]
                if start + n > after:
                    for c, pos, record in self.read_shard(shard, start, n, 0, 0, defaultdict(Counter)):
                        if record is not None and c >= after:
                            found = True
                            counts[shard.name][BORROWED] += 1
                            yield pos, record
                start += n
            if not found and after == 0:
                raise DataCeilingExceeded(f"no readable record left in {self.index.folder} to fill a batch; "
                                          f"{ceiling.where} read bad shards: {describe_shards(counts)}")
            after = 0

    def _resampled(self, slot: int, epoch: int, counts: ShardCounts, ceiling: Ceiling) -> Iterator[Positioned]:
        rng = random.Random(f"{self.plan.seed}/{epoch}/{slot}/resample")
        shards = list(range(len(self.index.shards)))
        idle = 0
        while True:
            (i,) = rng.choices(shards, weights=self.plan.eligible)
            shard = self.index.shards[i]
            found = False
            for _, pos, record in self.read_shard(shard, 0, self.plan.eligible[i], 0, self.plan.total + 1, counts):
                if record is not None:
                    found = True
                    counts[shard.name][GOOD] += 1
                    yield pos, record
            ceiling.check(counts)
            idle = 0 if found else idle + 1
            if idle > 4 * len(shards):
                raise DataCeilingExceeded(f"{idle} shards drawn from {self.index.folder} in a row held no readable "
                                          f"record: {describe_shards(counts)}")
