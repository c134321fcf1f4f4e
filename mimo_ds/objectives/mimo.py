"""Stage 2, MIMO: cross-lingual InfoNCE in the student's own space plus distillation onto the English teacher.

    L = λ·InfoNCE(s(q_a), s(p_b)) + (1 − λ)·½[(1 − cos(P s(q_a), t(prompt ⊕ q_en))) + (1 − cos(P s(p_b), t(p_en)))]

for rows parallel across languages, the query in language a and its positive passage in b ≠ a (every ordered pair
in turn, the same assignment as XLCO), in-batch negatives, scale 20 (τ = 0.05), λ = 0.2. The teacher sees the
English query with its query prompt and the English passage without. Jang, Hong & Lim (2026), "MIMO: Multilingual
Information Retrieval via Monolingual Objectives", arXiv 2605.31171.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives.base import LossOutput, Objective, ObjectiveSettings, Role
from mimo_ds.objectives.distill import Distance
from mimo_ds.objectives.schedules import RoleLanguages, cross_lingual
from mimo_ds.objectives.terms import distill_loss, info_nce
from mimo_ds.record_kinds import ROWS

Negatives = Literal["local", "global"]
NEGATIVES_HELP = "in-batch negatives from this rank only (the paper) or keys gathered from all ranks"
#: A query and its positive passage: the student roles of MIMO and of the InfoNCE / XLCO baselines.
QUERY_AND_PASSAGE = (Role("query", "query", query=True), Role("passage", "passage"))


class MimoSettings(ObjectiveSettings):
    swept = {"lam": "lambda"}
    kind: Literal["mimo"]
    lam: float = Field(0.2, ge=0.0, le=1.0, description="weight of the cross-lingual InfoNCE term")
    scale: float = Field(20.0, gt=0.0, description="InfoNCE logit scale (1/temperature)")
    distance: Distance = "cosine"
    negatives: Negatives = Field("local", description=NEGATIVES_HELP)


class Mimo(Objective):
    kind = "mimo"
    stage = 2
    shards = ROWS
    Settings = MimoSettings
    student_roles = QUERY_AND_PASSAGE
    teacher_roles = (Role("teacher_query", "query", query=True), Role("teacher_passage", "passage"))

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return cross_lingual(languages, seed)

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        s = self.settings
        q, p = student["query"], student["passage"]
        nce = info_nce(q.emb, p.emb, s.scale, s.negatives)
        kd_q = distill_loss(q.proj, teacher["teacher_query"], s.distance)
        kd_p = distill_loss(p.proj, teacher["teacher_passage"], s.distance)
        loss = s.lam * nce + (1.0 - s.lam) * 0.5 * (kd_q + kd_p)
        return LossOutput(loss, {"infonce": nce.detach(), "distill_query": kd_q.detach(),
                                 "distill_passage": kd_p.detach()})
