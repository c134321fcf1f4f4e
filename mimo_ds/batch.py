"""What crosses between the loader, the models, the step and the objectives: tokens, a batch, a role's embeddings.

A leaf module (it imports nothing of mimo_ds): the data loader builds `Batch`es, the models read `Tokens` and return
`Embedded`, the objectives compute losses on `Embedded`; none of them needs to import another for these types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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


class Embedded(NamedTuple):
    """One text field through the student: the native embedding (used for retrieval) and P of it (for distillation).

    A NamedTuple, not a dataclass, so ZeRO-3's module hooks can see the tensors inside the output.
    """

    emb: torch.Tensor
    proj: torch.Tensor | None
