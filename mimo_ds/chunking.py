"""Length-grouped chunks: which rows of a padded field run together in one encoder pass, and at what width.

A field [B, L] is run in chunks of at most `size` rows, each trimmed to the columns that hold any of its tokens.
Cut in arrival order, one long text makes its whole chunk pay its length (mMARCO passages are ~70 tokens with a long
tail, queries ~10: most of such a chunk is padding). Cut after ordering the rows by their real token count, rows of
like length share a chunk and the columns run are close to the tokens there are. Only the grouping changes, never a
row's embedding: callers run the chunks, then put each chunk's rows back at `rows(chunk)`, so whatever comes after
(the loss, a cache, a caller's row order) sees the field in its own order.

Padding efficiency = real tokens / computed tokens (rows × columns summed over the chunks actually run); the trainer
reports it per step from `field_counts`, the rule the step runs by.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Chunk:
    """Rows `order[start:stop]` of the field, columns `[first, last)`."""

    start: int
    stop: int
    first: int
    last: int

    @property
    def computed(self) -> int:
        return (self.stop - self.start) * (self.last - self.first)


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of one field: `order` (CPU LongTensor [B]) lists the field's rows in the order the chunks take them."""

    order: torch.Tensor
    chunks: tuple[Chunk, ...]

    def rows(self, chunk: Chunk) -> torch.Tensor:
        """The field's row positions that `chunk` holds, in the chunk's order."""
        return self.order[chunk.start : chunk.stop]

    @property
    def computed(self) -> int:
        return sum(c.computed for c in self.chunks)


def columns(mask: torch.Tensor) -> tuple[int, int]:
    """The first and one-past-last column holding any token (left or right padding alike); the full width for a
    mask without any token."""
    found = mask.any(dim=0).nonzero()
    if not len(found):
        return 0, mask.shape[1]
    return int(found.min()), int(found.max()) + 1


def plan_chunks(mask: torch.Tensor, size: int) -> ChunkPlan:
    """Rows ordered by real token count, longest first (a chunk that does not fit fails on the first pass; ties keep
    arrival order), cut into chunks of `size` rows, each trimmed to its own columns. `mask` is the CPU attention mask
    [B, L], so no chunk waits on the device to learn its own shape."""
    if size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {size}")
    order = torch.sort(mask.sum(dim=1), descending=True, stable=True).indices
    chunks = []
    for start in range(0, mask.shape[0], size):
        stop = min(start + size, mask.shape[0])
        chunks.append(Chunk(start, stop, *columns(mask[order[start:stop]])))
    return ChunkPlan(order, tuple(chunks))


def chunk_rows(mini_batch: int | None, rows: int) -> int:
    """Rows per student pass: the whole batch (one direct pass) unless a smaller `mini_batch` turns on cached passes."""
    return rows if mini_batch is None or mini_batch >= rows else mini_batch


def field_counts(masks: Iterable[torch.Tensor], mini_batch: int | None) -> tuple[int, int]:
    """(real tokens, computed tokens) of the student's passes over these fields' masks, by the step's rule."""
    real = computed = 0
    for mask in masks:
        real += int(mask.sum())
        if mask.shape[0]:
            computed += plan_chunks(mask, chunk_rows(mini_batch, mask.shape[0])).computed
    return real, computed
