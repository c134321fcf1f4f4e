"""The training loader: a shard folder streamed to one rank as batches, split by rank and worker, exactly resumable.

Iterating a `TrainLoader` runs the rank's slots in DataLoader workers and gathers what they hand over; its state is
where the rank's stream stands, and a fresh loader with the same plan continues exactly there. The parts, each a
module to read top to bottom:
- `mimo_ds.data.plan`: the epoch plan (ordinals, slots, batches per slot), from `index.json` alone;
- `mimo_ds.data.reading`: a slot's records (shard reading, bad-record attribution, borrowing, resampling, shuffle);
- `mimo_ds.data.collate`: records → the objective's `Batch` (roles, languages, tokens or cached teacher embeddings);
- `mimo_ds.data.streams`: the worker side (slot roles, resume skips, the hand-off of batches and counts).

Resampled mode draws shards with replacement and yields `steps_per_epoch` batches per rank: for runs where an epoch
boundary must not depend on the data size. The bad-record ceiling (`mimo_ds.data.ceiling`) judges each slot after
every shard and each rank after every batch; past it the loader raises `DataCeilingExceeded` from the main process
with one line naming the shards and reasons.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from mimo_ds.batch import Batch
from mimo_ds.data.ceiling import BORROWED, GOOD, NOT_BAD, ShardCounts, bad_only, merge
from mimo_ds.data.collate import Collator
from mimo_ds.data.plan import EpochPlan
from mimo_ds.data.reading import SlotReader
from mimo_ds.data.records import DataCeilingExceeded
from mimo_ds.data.shards import ShardIndex, read_index
from mimo_ds.data.streams import SlotStreams, plain
from mimo_ds.data.teacher_cache import check_cache
from mimo_ds.objectives import objective_class

# 2: bad-record counts per shard (1 kept them per reason; a version-1 state still loads, see load_state_dict).
STATE_VERSION = 2
EARLIER_EPOCHS = "(earlier epochs)"


@dataclass
class LoaderSpec:
    """Everything the training loader needs; `build_train_loader` checks it before any worker starts.

    `rank` / `world_size` left None are taken from torch.distributed when initialised, else from RANK / WORLD_SIZE.
    `languages` None means every language of the index (for a parallel kind: the languages every record holds).
    `objective` is a registered objective kind; `student_prompts` is the student's (query prompt, passage prompt),
    `teacher_query_prompt` the teacher's query prompt (teacher roles marked as queries get it),
    `teacher_passage_prompt` its prompt for the other roles.
    `max_bad_fraction` is the ceiling on bad records, judged against the records the epoch plans (docs/data.md).
    `teacher_cache` (a `mimo-ds teacher-cache` folder for these shards) replaces the teacher tokens by cached
    embeddings (`Batch.teacher_embeddings`); then no teacher tokenizer is needed.
    """

    shards: str | os.PathLike[str]
    objective: str
    student_tokenizer: Any
    batch_size: int
    teacher_tokenizer: Any = None
    student_prompts: tuple[str, str] = ("", "")
    teacher_query_prompt: str = ""
    teacher_passage_prompt: str = ""
    languages: Sequence[str] | None = None
    student_max_length: int = 256
    teacher_max_length: int = 256
    seed: int = 42
    rank: int | None = None
    world_size: int | None = None
    num_workers: int = 2
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    resampled: bool = False
    steps_per_epoch: int | None = None
    max_bad_fraction: float = 0.01
    prefetch_factor: int = 2
    teacher_cache: str | os.PathLike[str] | None = None


def _rank_and_world(spec: LoaderSpec) -> tuple[int, int]:
    if spec.rank is not None and spec.world_size is not None:
        return spec.rank, spec.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class TrainLoader:
    """Iterate it for the rest of the current epoch's batches (docs/data-contract.md); then the epoch advances.

    `len(loader)` is the number of batches per epoch, the same on every rank. `state_dict()` after a step and
    `load_state_dict()` in a fresh loader with the same world size, workers, batch size, seed and shards continue
    with exactly the batches that were left.
    """

    def __init__(self, spec: LoaderSpec, streams: SlotStreams):
        self.spec = spec
        self._streams = streams
        self.epoch = 0
        self.batches_done = 0
        self._past_counts: ShardCounts = {}  # epochs done, per shard
        self._worker_counts: dict[int, dict[str, dict[str, int]]] = {}  # this epoch, per slot role, per shard

    @property
    def languages(self) -> tuple[str, ...]:
        return self._streams.plan.languages

    def __len__(self) -> int:
        if self.spec.resampled:
            return int(self.spec.steps_per_epoch or 0)
        plan = self._streams.plan
        available = plan.batches_per_slot() * plan.workers
        return min(available, self.spec.steps_per_epoch) if self.spec.steps_per_epoch else available

    def __iter__(self) -> Iterator[Batch]:
        streams = self._streams
        streams.epoch, streams.skip, streams.batches_per_rank = self.epoch, self.batches_done, len(self)
        if self.spec.num_workers == 0:
            source: Iterable[Any] = streams
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism; avoids fork warnings
            source = DataLoader(
                streams,
                batch_size=None,
                num_workers=self.spec.num_workers,
                prefetch_factor=self.spec.prefetch_factor,
                persistent_workers=False,
                # A generator of its own: the workers' base seed must not be drawn from the global one, or starting
                # an epoch (or a resumed run) would shift the dropout masks of every later step.
                generator=torch.Generator().manual_seed(self.spec.seed),
            )
        ceiling = streams.ceiling(f"rank {streams.rank}")
        for delivery in source:
            self._worker_counts[delivery.role] = delivery.counts
            if delivery.failure is not None:
                raise DataCeilingExceeded(delivery.failure)
            ceiling.check(self._current_counts())
            self.batches_done += 1
            yield delivery.batch
        if self.batches_done != len(self):
            raise RuntimeError(f"epoch {self.epoch} ended after {self.batches_done} of {len(self)} batches")
        merge(self._past_counts, self._current_counts())
        self._worker_counts = {}
        self.epoch += 1
        self.batches_done = 0

    def _current_counts(self) -> ShardCounts:
        total: ShardCounts = {}
        for counts in self._worker_counts.values():
            merge(total, counts)
        return total

    def _all_counts(self) -> ShardCounts:
        return merge(merge({}, self._past_counts), self._current_counts())

    def bad_records(self) -> dict[str, dict[str, int]]:
        """Bad records skipped on this rank since the run began (resumed runs included): shard → reason → count.
        Records read ahead of the batches handed out are included."""
        return bad_only(self._all_counts())

    def bad_counts(self) -> dict[str, int]:
        """Bad records skipped on this rank since the run began, by reason (records read ahead included)."""
        total: Counter[str] = Counter()
        for reasons in self.bad_records().values():
            total.update(reasons)
        return dict(sorted(total.items()))

    def read_counts(self) -> dict[str, int]:
        """Good records read on this rank since the run began, and how many were borrowed to fill short slots."""
        total: Counter[str] = Counter()
        for counts in self._all_counts().values():
            total.update({k: v for k, v in counts.items() if k in NOT_BAD})
        return {GOOD: total[GOOD], BORROWED: total[BORROWED]}

    def _identity(self) -> dict[str, Any]:
        s = self.spec
        return {
            "world_size": self._streams.plan.world,
            "num_workers": self._streams.plan.workers,
            "batch_size": s.batch_size,
            "seed": s.seed,
            "objective": s.objective,
            "languages": list(self.languages),
            "resampled": s.resampled,
            "steps_per_epoch": len(self),
            "shard_shuffle": s.shard_shuffle,
            "shuffle_buffer": s.shuffle_buffer,
            "data": self._streams.plan.index.fingerprint(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's stream stands; the same on every rank but for the bad-record counts."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "identity": self._identity(),
            "counts": plain(self._past_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` stood; refuses (naming what differs) when that cannot be exact."""
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"loader state version {state.get('version')!r} is not 1 or {STATE_VERSION}")
        saved, now = state["identity"], self._identity()
        diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
        if diffs:
            raise ValueError(
                "cannot resume the data stream exactly; it needs the same world size, workers, batch size, seed, "
                "languages and shards as the saved run. Differences: " + "; ".join(diffs)
            )
        if not 0 <= state["batches_done"] <= len(self):
            raise ValueError(f"saved batches_done {state['batches_done']} is outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        counts = state.get("counts") or {}
        if state["version"] == 1:  # reason → count, kept before counts were per shard
            counts = {EARLIER_EPOCHS: counts} if counts else {}
        self._past_counts = merge({}, counts)
        self._worker_counts = {}


def _check_teacher_cache(spec: LoaderSpec, index: ShardIndex) -> None:
    """Refuse, before any worker starts, a cache for other shards, other teacher roles or (query roles) made with
    another query prompt than the one this loader would put on the teacher's queries."""
    objective = objective_class(spec.objective)
    if not objective.needs_teacher():
        raise ValueError(f"objective {spec.objective!r} uses no teacher; drop teacher_cache {spec.teacher_cache}")
    check_cache(spec.teacher_cache, objective, {"query_prompt": spec.teacher_query_prompt,
                                                "passage_prompt": spec.teacher_passage_prompt}, index.fingerprint())


def build_train_loader(spec: LoaderSpec) -> TrainLoader:
    """Check `spec` against the shard folder and return the loader (no worker starts until iteration)."""
    objective = objective_class(spec.objective)
    if spec.batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {spec.batch_size}")
    if spec.num_workers < 0:
        raise ValueError(f"num_workers must be ≥ 0, got {spec.num_workers}")
    if not 0.0 <= spec.max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {spec.max_bad_fraction}")
    if spec.resampled and not spec.steps_per_epoch:
        raise ValueError("resampled mode needs steps_per_epoch (the fixed number of batches per epoch per rank)")
    index = read_index(spec.shards, require_files=False)
    if index.record_kind != objective.shards:
        raise ValueError(f"objective {spec.objective!r} needs {objective.shards} shards; {index.folder} holds {index.kind}")
    available = index.available_languages
    languages = tuple(sorted(set(spec.languages))) if spec.languages is not None else tuple(available)
    if unknown := sorted(set(languages) - set(available)):
        raise ValueError(f"languages {unknown} are not in {index.folder} (it has {list(available)})")
    if not languages:
        raise ValueError(f"no languages selected from {index.folder}")
    if spec.teacher_cache is not None:
        _check_teacher_cache(spec, index)
    elif objective.needs_teacher() and spec.teacher_tokenizer is None:
        raise ValueError(f"objective {spec.objective!r} needs a teacher tokenizer")
    rank, world = _rank_and_world(spec)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    plan = EpochPlan(index, languages, world, max(1, spec.num_workers), spec.batch_size, spec.seed, spec.shard_shuffle)
    collate = Collator(objective, languages, spec.seed, student_tokenizer=spec.student_tokenizer,
                       student_prompts=spec.student_prompts, student_max_length=spec.student_max_length,
                       teacher_tokenizer=spec.teacher_tokenizer, teacher_query_prompt=spec.teacher_query_prompt,
                       teacher_passage_prompt=spec.teacher_passage_prompt,
                       teacher_max_length=spec.teacher_max_length, teacher_cache=spec.teacher_cache)
    streams = SlotStreams(plan, SlotReader(plan, spec.shuffle_buffer, spec.resampled), collate, rank,
                          spec.max_bad_fraction, spec.batch_size)
    loader = TrainLoader(spec, streams)
    if not spec.resampled and len(loader) == 0:
        raise ValueError(
            f"{index.folder} has {plan.total} records for languages {list(languages)}: too few for one batch of "
            f"{spec.batch_size} on each of {world} ranks × {plan.workers} workers"
        )
    if not spec.resampled and spec.steps_per_epoch and spec.steps_per_epoch > plan.batches_per_slot() * plan.workers:
        raise ValueError(
            f"steps_per_epoch {spec.steps_per_epoch} exceeds the {plan.batches_per_slot() * plan.workers} "
            f"batches an epoch of {index.folder} holds per rank; use resampled mode for more"
        )
    return loader
