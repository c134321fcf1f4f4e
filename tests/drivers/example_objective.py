"""An objective added the way docs/design.md describes: one class, nothing else touched.

Symmetric cross-lingual MIMO: λ·½[InfoNCE(q_a → p_b) + InfoNCE(p_b → q_a)] + (1 − λ)·distillation of both onto
the teacher's English. It reuses MIMO's roles and pair schedule and adds the passage→query direction.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives import LossOutput, Objective, ObjectiveSettings, Role
from mimo_ds.objectives.schedules import RoleLanguages, cross_lingual
from mimo_ds.objectives.terms import distill_loss, info_nce
from mimo_ds.record_kinds import ROWS


class SymmetricMimoSettings(ObjectiveSettings):
    swept = {"lam": "lambda"}
    kind: Literal["sym_mimo"]
    lam: float = Field(0.5, ge=0.0, le=1.0)
    scale: float = Field(20.0, gt=0.0)


class SymmetricMimo(Objective):
    kind = "sym_mimo"
    stage = 2
    shards = ROWS
    Settings = SymmetricMimoSettings
    student_roles = (Role("query", "query", query=True), Role("passage", "passage"))
    teacher_roles = (Role("teacher_query", "query", query=True), Role("teacher_passage", "passage"))

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return cross_lingual(languages, seed)

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        s = self.settings
        q, p = student["query"], student["passage"]
        nce = 0.5 * (info_nce(q.emb, p.emb, s.scale) + info_nce(p.emb, q.emb, s.scale))
        kd = 0.5 * (distill_loss(q.proj, teacher["teacher_query"]) + distill_loss(p.proj, teacher["teacher_passage"]))
        return LossOutput(s.lam * nce + (1 - s.lam) * kd, {"infonce": nce.detach(), "distill": kd.detach()})


if __name__ == "__main__":  # train with it: python example_objective.py [mimo_ds.train arguments]
    from mimo_ds.train import main

    sys.exit(main(sys.argv[1:]))
