"""The loader's worker side: each DataLoader worker plays one slot of its rank, batches and collates its records, and
hands the main process the batch together with the slot's bad-record counts.

DataLoader worker w plays slot role (w + skip) mod W, so after a resume at batch `skip` the DataLoader's round robin
(worker 0 first) still hands out batch `skip` first. A resume replays each worker's stream up to its point without
collating: exact, and it rebuilds the epoch's bad-record counts on the way. A worker past the bad-record ceiling
hands over its verdict as data (`Delivery.failure`), so the main process raises it with no worker traceback around.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import islice
from typing import Iterator, NamedTuple

from torch.utils.data import IterableDataset, get_worker_info

from mimo_ds.batch import Batch
from mimo_ds.data.ceiling import Ceiling, ShardCounts
from mimo_ds.data.collate import Collator
from mimo_ds.data.plan import EpochPlan
from mimo_ds.data.reading import SlotReader
from mimo_ds.data.records import DataCeilingExceeded


class Delivery(NamedTuple):
    """What a worker hands the main process: a batch (None once it failed), its slot role, the slot's per-shard
    counts so far, and the ceiling's verdict when the slot went past it."""

    batch: Batch | None
    role: int
    counts: dict[str, dict[str, int]]
    failure: str | None = None


def plain(counts: ShardCounts) -> dict[str, dict[str, int]]:
    """Counts as plain dicts: what crosses from a worker, and what a state holds."""
    return {shard: dict(c) for shard, c in counts.items()}


class SlotStreams(IterableDataset):
    """One rank's slots: iterated in a worker, it yields that worker's `Delivery` items for the current epoch.

    `epoch`, `skip` (batches of the epoch already handed out) and `batches_per_rank` are set by the `TrainLoader`
    before each iteration; workers are forked per epoch and copy them.
    """

    def __init__(self, plan: EpochPlan, reader: SlotReader, collate: Collator, rank: int, max_bad_fraction: float,
                 batch_size: int) -> None:
        self.plan = plan
        self.reader = reader
        self.collate = collate
        self.rank = rank
        self.max_bad_fraction = max_bad_fraction
        self.batch_size = batch_size
        self.epoch = 0
        self.skip = 0
        self.batches_per_rank = 0

    def planned(self, batches_per_rank: int) -> int:
        """Records the epoch plans over all ranks: every selected record, or (resampled) the batches' records."""
        if self.reader.resampled:
            return batches_per_rank * self.batch_size * self.plan.world
        return self.plan.total

    def ceiling(self, where: str) -> Ceiling:
        index = self.plan.index
        return Ceiling(self.max_bad_fraction, self.planned(self.batches_per_rank), self.epoch,
                       f"{where} of {index.folder}", {s.name: s.count for s in index.shards})

    def __iter__(self) -> Iterator[Delivery]:
        workers = self.plan.workers
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != workers:
            raise RuntimeError(f"planned for {workers} workers, running under {info.num_workers}")
        role = (worker + self.skip) % workers
        slot = self.rank * workers + role
        mine = len(range(role, self.batches_per_rank, workers))
        skip = len(range(role, self.skip, workers))
        counts: ShardCounts = defaultdict(Counter)
        records = self.reader.slot_records(slot, self.epoch, counts, self.ceiling(f"rank {self.rank} slot {slot}"))
        for b in range(mine):
            try:
                chunk = list(islice(records, self.batch_size))
            except DataCeilingExceeded as exc:
                yield Delivery(None, role, plain(counts), str(exc))
                return
            if b < skip:
                continue
            yield Delivery(self.collate(chunk), role, plain(counts))
