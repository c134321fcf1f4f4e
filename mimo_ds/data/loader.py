"""Streaming training loader over a shard folder: split by rank and worker, shuffled, tokenised, exactly resumable.

How an epoch is planned (all from `index.json`, identically on every rank, with no communication):
- the shards are put in a seeded order for the epoch (`seed`, `epoch`), and the records of the selected languages in
  that order are numbered 0..N-1 (their *ordinals*);
- there are S = world_size × workers *slots*; slot s owns the ordinal range [s·N/S, (s+1)·N/S): every record
  belongs to exactly one slot, and slots differ by at most one record;
- every slot yields the same number of full batches, ⌊⌊N/S⌋ / B⌋, so every rank yields the same number of batches
  (no DDP hang); the few records left over are a different random few each epoch;
- a slot shuffles its records with a seeded buffer, so the whole stream is a function of (seed, epoch, slot).
DataLoader worker w plays slot role (w + skip) mod W, so after a resume at batch `skip` the DataLoader's round robin
(worker 0 first) still hands out batch `skip` first. A resume replays each worker's stream up to its point without
tokenising: exact, and it rebuilds the epoch's bad-record counts on the way.

Resampled mode draws shards with replacement (seeded per epoch and slot) and yields `steps_per_epoch` batches per
rank: for runs where an epoch boundary must not depend on the data size.

What a batch holds is read from the objective's declaration (`mimo_ds.objectives`): its student roles, in the
languages its schedule gives the row's write position, and its teacher roles (English, the teacher's prompt on
queries), each role's texts built by `role_texts`. With a teacher cache (`mimo_ds.data.teacher_cache`) the teacher
roles are looked up by write position instead of tokenised, each lookup checked against the sample id and the exact
teacher text the cache encoded.

A record that cannot be used is skipped and counted by shard and reason (`mimo_ds.data.records`); when a slot is
short of records because of them, it borrows the records after its range (counted as `borrowed`), so the batch count
holds. A shard whose size or sha256 differs from the index's is not read (its records count as `size_mismatch` /
`hash_mismatch`). The bad-record ceiling (`mimo_ds.data.ceiling`) judges each slot after every shard and each rank
after every batch; past it the loader raises `DataCeilingExceeded` from the main process with one line naming the
shards and reasons (a worker hands its verdict over as data, so no traceback wraps the message).
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mimo_ds.data.ceiling import BORROWED, GOOD, NOT_BAD, Ceiling, ShardCounts, bad_only, describe_shards, merge
from mimo_ds.data.records import (
    MISSING_SHARD,
    TRUNCATED_SHARD,
    UNINDEXED,
    BadRecord,
    DataCeilingExceeded,
    check_member,
)
from mimo_ds.data.batch import Batch, Tokens
from mimo_ds.data.shards import ShardIndex, ShardInfo, ShardReadError, check_shard_file, iter_shard, read_index
from mimo_ds.data.teacher_cache import TeacherCache, check_cache, teacher_texts
from mimo_ds.objectives import objective_class, role_texts

# 2: bad-record counts per shard (1 kept them per reason; a version-1 state still loads, see load_state_dict).
STATE_VERSION = 2
EARLIER_EPOCHS = "(earlier epochs)"


class _Delivery(NamedTuple):
    """What a worker hands the main process: a batch (None once it failed), its slot role, the slot's per-shard
    counts so far, and the ceiling's verdict when the slot went past it."""

    batch: Batch | None
    role: int
    counts: dict[str, dict[str, int]]
    failure: str | None = None


@dataclass
class LoaderSpec:
    """Everything the training loader needs; `build_train_loader` checks it before any worker starts.

    `rank` / `world_size` left None are taken from torch.distributed when initialised, else from RANK / WORLD_SIZE.
    `languages` None means every language of the index (for rows: the languages every row holds).
    `objective` is a registered objective kind; `student_prompts` is the student's (query prompt, passage prompt),
    `teacher_query_prompt` the teacher's query prompt (teacher roles marked as queries get it).
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


def _load_tokenizer(tokenizer: Any, what: str) -> Any:
    """A tokenizer object as given, or loaded from a path (offline: the path must hold the tokenizer files)."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except OSError as exc:
        raise ValueError(f"cannot load the {what} tokenizer from {tokenizer}: {exc}") from exc


def _shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
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


class _SlotStreams(IterableDataset):
    """The per-worker side: reads a slot's records, counts the bad ones, batches and tokenises.

    Yields `_Delivery` items so the main process gathers every worker's counts (and verdict) without a side channel.
    """

    def __init__(self, spec: LoaderSpec, index: ShardIndex, languages: tuple[str, ...], rank: int, world: int):
        self.spec = spec
        self.index = index
        self.kind = index.kind
        self.languages = languages
        self.select = set(languages)
        self.subset = self.kind == "pairs" and self.select != set(index.languages)
        self.rank, self.world = rank, world
        self.workers = max(1, spec.num_workers)
        self.student_tok = _load_tokenizer(spec.student_tokenizer, "student")
        self.teacher_tok = _load_tokenizer(spec.teacher_tokenizer, "teacher")
        self.objective = objective_class(spec.objective)
        self.schedule = self.objective.schedule(languages, spec.seed)
        self._cache: TeacherCache | None = None  # opened in the worker: memory maps are not for pickling
        # Per-shard counts of the selected records: what the ordinals number.
        if self.subset:
            self.eligible = [sum(s.lang_counts.get(lang, 0) for lang in self.select) for s in index.shards]
        else:
            self.eligible = [s.count for s in index.shards]
        self.total = sum(self.eligible)
        # Set by the TrainLoader before each iteration (workers are forked per epoch and copy them).
        self.epoch = 0
        self.skip = 0
        self.batches_per_rank = 0
        self._slot_ceiling = self.ceiling("a slot")  # the worker's own, set when it starts

    # -- the epoch plan ------------------------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.index.shards)))
        if self.spec.shard_shuffle:
            random.Random(f"{self.spec.seed}/{epoch}/shards").shuffle(order)
        return order

    def slot_range(self, slot: int) -> tuple[int, int]:
        slots = self.world * self.workers
        return slot * self.total // slots, (slot + 1) * self.total // slots

    def batches_per_slot(self) -> int:
        return (self.total // (self.world * self.workers)) // self.spec.batch_size

    # -- reading -------------------------------------------------------------------------------------------------------
    def _judge(self, key: str, record: dict[str, Any] | None, bad: BadRecord | None) -> tuple[bool, BadRecord | None]:
        """(eligible, bad): whether the member takes an ordinal, and why it cannot be used (None: usable)."""
        if bad is None:
            known = self.index.languages if self.kind == "pairs" else self.languages
            bad = check_member(key, record, self.kind, known)
        if not self.subset:
            return True, bad
        # A pair in an unselected language takes no ordinal; an unreadable one neither (its language is unknown).
        lang = record.get("lang") if isinstance(record, dict) else None
        return lang in self.select, bad

    def _read_shard(
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
                eligible, bad = self._judge(member.key, member.record, member.bad)
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

    def planned(self, batches_per_rank: int) -> int:
        """Records the epoch plans over all ranks: every selected record, or (resampled) the batches' records."""
        if self.spec.resampled:
            return batches_per_rank * self.spec.batch_size * self.world
        return self.total

    def ceiling(self, where: str) -> Ceiling:
        return Ceiling(self.spec.max_bad_fraction, self.planned(self.batches_per_rank), self.epoch,
                       f"{where} of {self.index.folder}", {s.name: s.count for s in self.index.shards})

    def _range_records(self, order: list[int], lo: int, hi: int, counts: ShardCounts) -> Iterator[tuple[int, dict]]:
        """The good records with ordinals in [lo, hi), in epoch order; reads on to the next eligible record after
        them so the bad records in between are counted."""
        start = 0
        for i in order:
            shard, n = self.index.shards[i], self.eligible[i]
            if lo > 0 and start + n <= lo:
                start += n
                continue
            done = False
            for c, pos, record in self._read_shard(shard, start, n, lo, hi, counts):
                if c >= hi:
                    done = True
                    break
                if record is not None and c >= lo:
                    counts[shard.name][GOOD] += 1
                    yield pos, record
            self._slot_ceiling.check(counts)
            if done:
                return
            start += n

    def _borrowed_records(self, order: list[int], after: int, counts: ShardCounts) -> Iterator[tuple[int, dict]]:
        """Good records from ordinal `after` on, cycling through the epoch: only read when bad records left a slot
        short. Their bad records are other slots' to count."""
        while True:
            found = False
            start = 0
            for i in order:
                shard, n = self.index.shards[i], self.eligible[i]
                if start + n > after:
                    for c, pos, record in self._read_shard(shard, start, n, 0, 0, defaultdict(Counter)):
                        if record is not None and c >= after:
                            found = True
                            counts[shard.name][BORROWED] += 1
                            yield pos, record
                start += n
            if not found and after == 0:
                raise DataCeilingExceeded(f"no readable record left in {self.index.folder} to fill a batch; "
                                          f"{self._slot_ceiling.where} read bad shards: {describe_shards(counts)}")
            after = 0

    def _resampled_records(self, slot: int, counts: ShardCounts) -> Iterator[tuple[int, dict]]:
        rng = random.Random(f"{self.spec.seed}/{self.epoch}/{slot}/resample")
        shards = list(range(len(self.index.shards)))
        idle = 0
        while True:
            (i,) = rng.choices(shards, weights=self.eligible)
            shard = self.index.shards[i]
            found = False
            for _, pos, record in self._read_shard(shard, 0, self.eligible[i], 0, self.total + 1, counts):
                if record is not None:
                    found = True
                    counts[shard.name][GOOD] += 1
                    yield pos, record
            self._slot_ceiling.check(counts)
            idle = 0 if found else idle + 1
            if idle > 4 * len(shards):
                raise DataCeilingExceeded(f"{idle} shards drawn from {self.index.folder} in a row held no readable "
                                          f"record: {describe_shards(counts)}")

    def slot_records(self, slot: int, counts: ShardCounts) -> Iterator[tuple[int, dict]]:
        rng = random.Random(f"{self.spec.seed}/{self.epoch}/{slot}/samples")
        if self.spec.resampled:
            yield from _shuffled(self._resampled_records(slot, counts), self.spec.shuffle_buffer, rng)
            return
        order = self.shard_order(self.epoch)
        lo, hi = self.slot_range(slot)
        yield from _shuffled(self._range_records(order, lo, hi, counts), self.spec.shuffle_buffer, rng)
        yield from self._borrowed_records(order, hi, counts)

    # -- batches -------------------------------------------------------------------------------------------------------
    def _tokenize(self, tokenizer: Any, texts: list[str], max_length: int) -> Tokens:
        # padding="longest" = dynamic padding; the side is the tokenizer's own (left for decoder teachers).
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def _languages(self, chunk: list[tuple[int, dict]]) -> tuple[list[dict[str, str]] | None, dict[str, list[str]]]:
        """Each row's language per student role (from the schedule, or a pair's own), and the same as lists."""
        roles = [role.name for role in self.objective.student_roles]
        if self.schedule is None:
            return None, {role: [r["lang"] for _, r in chunk] for role in roles}
        plans = [self.schedule(pos) for pos, _ in chunk]
        return plans, {role: [p[role] for p in plans] for role in roles}

    def collate(self, chunk: list[tuple[int, dict]]) -> Batch:
        records = [r for _, r in chunk]
        plans, languages = self._languages(chunk)
        student = role_texts(self.objective.student_roles, records, self.kind, plans, self.spec.student_prompts)
        batch = Batch(ids=[r["id"] for r in records], languages=languages,
                      student={role: self._tokenize(self.student_tok, texts, self.spec.student_max_length)
                               for role, texts in student.items()})
        if not self.objective.needs_teacher():
            return batch
        teacher = teacher_texts(self.objective, records, self.spec.teacher_query_prompt)
        if self.spec.teacher_cache is None:
            batch.teacher = {role: self._tokenize(self.teacher_tok, texts, self.spec.teacher_max_length)
                             for role, texts in teacher.items()}
        else:
            if self._cache is None:
                self._cache = TeacherCache.open(self.spec.teacher_cache)
            batch.teacher_embeddings = self._cache.take([pos for pos, _ in chunk], batch.ids, teacher)
        return batch

    def __iter__(self) -> Iterator[_Delivery]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"planned for {self.workers} workers, running under {info.num_workers}")
        role = (worker + self.skip) % self.workers
        slot = self.rank * self.workers + role
        mine = len(range(role, self.batches_per_rank, self.workers))
        skip = len(range(role, self.skip, self.workers))
        counts: ShardCounts = defaultdict(Counter)
        self._slot_ceiling = self.ceiling(f"rank {self.rank} slot {slot}")
        records = self.slot_records(slot, counts)
        for b in range(mine):
            try:
                chunk = list(islice(records, self.spec.batch_size))
            except DataCeilingExceeded as exc:
                yield _Delivery(None, role, _plain(counts), str(exc))
                return
            if b < skip:
                continue
            yield _Delivery(self.collate(chunk), role, _plain(counts))


def _plain(counts: ShardCounts) -> dict[str, dict[str, int]]:
    """Counts as plain dicts: what crosses from a worker, and what a state holds."""
    return {shard: dict(c) for shard, c in counts.items()}


class TrainLoader:
    """Iterate it for the rest of the current epoch's batches (docs/data-contract.md); then the epoch advances.

    `len(loader)` is the number of batches per epoch, the same on every rank. `state_dict()` after a step and
    `load_state_dict()` in a fresh loader with the same world size, workers, batch size, seed and shards continue
    with exactly the batches that were left.
    """

    def __init__(self, spec: LoaderSpec, streams: _SlotStreams):
        self.spec = spec
        self._streams = streams
        self.epoch = 0
        self.batches_done = 0
        self._past_counts: ShardCounts = {}  # epochs done, per shard
        self._worker_counts: dict[int, dict[str, dict[str, int]]] = {}  # this epoch, per slot role, per shard

    @property
    def languages(self) -> tuple[str, ...]:
        return self._streams.languages

    def __len__(self) -> int:
        if self.spec.resampled:
            return int(self.spec.steps_per_epoch or 0)
        available = self._streams.batches_per_slot() * self._streams.workers
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
            "world_size": self._streams.world,
            "num_workers": self._streams.workers,
            "batch_size": s.batch_size,
            "seed": s.seed,
            "objective": s.objective,
            "languages": list(self.languages),
            "resampled": s.resampled,
            "steps_per_epoch": len(self),
            "shard_shuffle": s.shard_shuffle,
            "shuffle_buffer": s.shuffle_buffer,
            "data": self._streams.index.fingerprint(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's stream stands; the same on every rank but for the bad-record counts."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "identity": self._identity(),
            "counts": _plain(self._past_counts),
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
    check_cache(spec.teacher_cache, objective, {"query_prompt": spec.teacher_query_prompt}, index.fingerprint())


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
    if index.kind != objective.shards:
        raise ValueError(f"objective {spec.objective!r} needs {objective.shards} shards; {index.folder} holds {index.kind}")
    available = index.languages if index.kind == "pairs" else index.row_languages
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
    streams = _SlotStreams(spec, index, languages, rank, world)
    loader = TrainLoader(spec, streams)
    if not spec.resampled and len(loader) == 0:
        raise ValueError(
            f"{index.folder} has {streams.total} records for languages {list(languages)}: too few for one batch of "
            f"{spec.batch_size} on each of {world} ranks × {streams.workers} workers"
        )
    if not spec.resampled and spec.steps_per_epoch and spec.steps_per_epoch > streams.batches_per_slot() * streams.workers:
        raise ValueError(
            f"steps_per_epoch {spec.steps_per_epoch} exceeds the {streams.batches_per_slot() * streams.workers} "
            f"batches an epoch of {index.folder} holds per rank; use resampled mode for more"
        )
    return loader
