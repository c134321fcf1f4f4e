"""The epoch plan: which records an epoch numbers, which slot owns which, and how many batches each slot yields.

All of it is computed from `index.json`, identically on every rank, with no communication:
- the shards are put in a seeded order for the epoch (`seed`, `epoch`), and the records of the selected languages in
  that order are numbered 0..N-1 (their *ordinals*);
- there are S = world_size × workers *slots*; slot s owns the ordinal range [s·N/S, (s+1)·N/S): every record
  belongs to exactly one slot, and slots differ by at most one record;
- every slot yields the same number of full batches, ⌊⌊N/S⌋ / B⌋, so every rank yields the same number of batches
  (no DDP hang); the few records left over are a different random few each epoch.

Which records are selected follows the kind's languages rule (`mimo_ds.record_kinds`): a language selection picks
the records of a tagged kind (a pair in another language takes no ordinal), while every record of a parallel kind
takes one (it must hold the selected languages, or it is a bad record).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from mimo_ds.data.shards import ShardIndex


@dataclass(frozen=True)
class EpochPlan:
    """The arithmetic of one shard folder split over `world` ranks × `workers` loader workers."""

    index: ShardIndex
    languages: tuple[str, ...]
    world: int
    workers: int
    batch_size: int
    seed: int
    shard_shuffle: bool

    @cached_property
    def subset(self) -> bool:
        """Whether the selection leaves records out (a tagged kind, not every language selected)."""
        return not self.index.record_kind.parallel and set(self.languages) != set(self.index.languages)

    @cached_property
    def eligible(self) -> list[int]:
        """Per shard, the records the ordinals number (the selected ones)."""
        if self.subset:
            select = set(self.languages)
            return [sum(s.lang_counts.get(lang, 0) for lang in select) for s in self.index.shards]
        return [s.count for s in self.index.shards]

    @cached_property
    def total(self) -> int:
        return sum(self.eligible)

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.index.shards)))
        if self.shard_shuffle:
            random.Random(f"{self.seed}/{epoch}/shards").shuffle(order)
        return order

    def slot_range(self, slot: int) -> tuple[int, int]:
        slots = self.world * self.workers
        return slot * self.total // slots, (slot + 1) * self.total // slots

    def batches_per_slot(self) -> int:
        return (self.total // (self.world * self.workers)) // self.batch_size
