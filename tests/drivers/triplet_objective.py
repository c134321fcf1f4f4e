"""A record kind added the way docs/design.md describes: one declaration, nothing in the package touched.

`triplets`: rows parallel across languages holding a query, its positive passage and a hard negative passage. The
objective trained on them is MIMO with the hard negative added to each query's negatives:

    L = λ·InfoNCE(s(q_a), [s(p_b); s(n_c)]) + (1 − λ)·½[(1 − cos(P s(q_a), t(prompt ⊕ q_en))) + (1 − cos(P s(p_b), t(p_en)))]

with (a, b), a ≠ b, MIMO's pair cycle and the negative's language c cycling over the languages in a stream of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives import LossOutput, Objective, ObjectiveSettings, Role
from mimo_ds.objectives.schedules import RoleLanguages, combine, cross_lingual, same_language
from mimo_ds.objectives.terms import distill_loss, info_nce
from mimo_ds.record_kinds import Languages, RecordKind

TRIPLETS = RecordKind("triplets", ("query", "positive", "negative"), Languages.PARALLEL)


class TripletMimoSettings(ObjectiveSettings):
    swept = {"lam": "lambda"}
    kind: Literal["triplet_mimo"]
    lam: float = Field(0.2, ge=0.0, le=1.0)
    scale: float = Field(20.0, gt=0.0)


class TripletMimo(Objective):
    kind = "triplet_mimo"
    stage = 2
    shards = TRIPLETS
    Settings = TripletMimoSettings
    student_roles = (Role("query", "query", query=True), Role("positive", "positive"), Role("negative", "negative"))
    teacher_roles = (Role("teacher_query", "query", query=True), Role("teacher_positive", "positive"))

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return combine(cross_lingual(languages, seed, roles=("query", "positive")),
                       same_language(languages, seed, roles=("negative",), stream="triplet-negative"))

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        s = self.settings
        q, p, n = student["query"], student["positive"], student["negative"]
        nce = info_nce(q.emb, torch.cat([p.emb, n.emb]), s.scale)  # row i's positive is key i; all else negatives
        kd = 0.5 * (distill_loss(q.proj, teacher["teacher_query"]) + distill_loss(p.proj, teacher["teacher_positive"]))
        return LossOutput(s.lam * nce + (1 - s.lam) * kd, {"infonce": nce.detach(), "distill": kd.detach()})


if __name__ == "__main__":  # train with it: python triplet_objective.py [mimo_ds.train arguments]
    from mimo_ds.train import main

    sys.exit(main(sys.argv[1:]))
