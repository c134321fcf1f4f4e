"""What the student returns for one text field: its native embedding and, when it has one, P of it."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Embedded(NamedTuple):
    """One text field through the student: the native embedding (used for retrieval) and P of it (for distillation).

    A NamedTuple, not a dataclass, so ZeRO-3's module hooks can see the tensors inside the output.
    """

    emb: torch.Tensor
    proj: torch.Tensor | None
