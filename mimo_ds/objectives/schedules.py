"""Language assignment for stage-2 rows: a pure function of (seed, the row's position), never of the run.

MIMO's comparison is only fair when every run sees the same (query language, passage language) for the same row, so
the assignment depends on nothing but the seed and the row's write position in its shard folder (its position in id
order: converters write ids in order). Not the shuffle, the rank, the worker or the epoch.

Balanced cycling (the paper's pre-sampling of MIMO's reference code): the P items (ordered pairs, or single
languages) are shuffled with the seed, dealt out to the next P positions, then shuffled again for the next cycle.
Over N rows in position order each item occurs ⌊N/P⌋ or ⌈N/P⌉ times, and each cycle's permutation depends only on
(seed, stream, cycle), so any position is computed in O(P) without the ones before it.

Objectives declare their schedule from the building blocks here (`cross_lingual`, `same_language`, `combine`);
the ones built on the same stream with the same seed (MIMO, XLCO, LaKDA's two query views) see identical pairs.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Hashable, Sequence

#: Position → {role: language}: what an objective's schedule answers for each row.
RoleLanguages = Callable[[int], dict[str, str]]

# Streams: MIMO and XLCO share one (identical assignments by construction); LaKDA reuses it for (q_a, q_b).
CROSS_STREAM = "cross-pairs"
SAME_STREAM = "same-language"
LAKDA_PASSAGE_STREAM = "lakda-passage"


def ordered_pairs(languages: Sequence[str]) -> list[tuple[str, str]]:
    """All (a, b) with a ≠ b over the sorted languages: 14 languages give 182 pairs."""
    langs = sorted(set(languages))
    return [(a, b) for a, b in itertools.permutations(langs, 2)]


class CyclicSchedule:
    """Position → item, cycling through a fresh seeded shuffle of `items` every len(items) positions."""

    def __init__(self, items: Sequence[Hashable], seed: int, stream: str):
        if not items:
            raise ValueError("a schedule needs at least one item")
        self.items = tuple(items)
        self.seed = seed
        self.stream = stream
        self._cache: dict[int, tuple[Hashable, ...]] = {}

    def _permutation(self, cycle: int) -> tuple[Hashable, ...]:
        if cycle not in self._cache:
            if len(self._cache) >= 64:  # positions arrive shard by shard: a few cycles are live at a time
                self._cache.clear()
            order = list(self.items)
            # A str seed is hashed with SHA-512 by `random`: stable across processes and Python runs.
            random.Random(f"{self.seed}/{self.stream}/{cycle}").shuffle(order)
            self._cache[cycle] = tuple(order)
        return self._cache[cycle]

    def __call__(self, position: int) -> Hashable:
        if position < 0:
            raise ValueError(f"position must be ≥ 0, got {position}")
        cycle, offset = divmod(position, len(self.items))
        return self._permutation(cycle)[offset]


class _PairRoles:
    """Gives the two languages of a pair schedule to two roles (a class, not a lambda: loader workers may pickle it)."""

    def __init__(self, schedule: CyclicSchedule, roles: tuple[str, str]) -> None:
        self.schedule, self.roles = schedule, roles

    def __call__(self, position: int) -> dict[str, str]:
        return dict(zip(self.roles, self.schedule(position)))  # type: ignore[call-overload]


class _SharedRoles:
    """Gives one language of a language schedule to every role."""

    def __init__(self, schedule: CyclicSchedule, roles: tuple[str, ...]) -> None:
        self.schedule, self.roles = schedule, roles

    def __call__(self, position: int) -> dict[str, str]:
        return dict.fromkeys(self.roles, self.schedule(position))  # type: ignore[arg-type]


class _Combined:
    def __init__(self, schedules: tuple[RoleLanguages, ...]) -> None:
        self.schedules = schedules

    def __call__(self, position: int) -> dict[str, str]:
        return {role: lang for schedule in self.schedules for role, lang in schedule(position).items()}


def cross_lingual(languages: Sequence[str], seed: int, roles: tuple[str, str] = ("query", "passage"),
                  stream: str = CROSS_STREAM) -> RoleLanguages:
    """(a, b), a ≠ b, cycling over every ordered pair of `languages`: 14 languages give 182 pairs."""
    pairs = ordered_pairs(languages)
    if not pairs:
        raise ValueError(f"a cross-lingual schedule needs at least two languages, got {sorted(set(languages))}")
    return _PairRoles(CyclicSchedule(pairs, seed, stream), roles)


def same_language(languages: Sequence[str], seed: int, roles: tuple[str, ...] = ("query", "passage"),
                  stream: str = SAME_STREAM) -> RoleLanguages:
    """One language for all `roles`, cycling over `languages`."""
    langs = sorted(set(languages))
    if not langs:
        raise ValueError("a schedule needs at least one language")
    return _SharedRoles(CyclicSchedule(langs, seed, stream), roles)


def combine(*schedules: RoleLanguages) -> RoleLanguages:
    """One schedule answering for the roles of several (each role answered by exactly one of them)."""
    return _Combined(schedules)
