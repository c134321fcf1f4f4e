"""One training batch as the loader hands it to the step: texts tokenised per role, with what identifies them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

#: A tokenised role: `input_ids` and `attention_mask`, LongTensor[B, L].
Tokens = dict[str, torch.Tensor]


@dataclass
class Batch:
    """Keyed by the objective's role names (`mimo_ds.objectives.base.Role`).

    `student`: the student's tokens per student role; `teacher`: the teacher's tokens per teacher role (live
    teacher), or, read from a teacher cache instead, `teacher_embeddings`: float32 [B, teacher_dim] per teacher role.
    `languages`: the language of each row's text per student role. `ids`: the sample ids, in row order.
    """

    ids: list[str]
    languages: dict[str, list[str]]
    student: dict[str, Tokens]
    teacher: dict[str, Tokens] = field(default_factory=dict)
    teacher_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self) -> Iterator[Tokens]:
        """Every tokenised role, student and teacher (for throughput counts)."""
        yield from self.student.values()
        yield from self.teacher.values()
