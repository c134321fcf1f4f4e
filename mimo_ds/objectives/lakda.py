"""Baseline LaKDA (language-agnostic knowledge distillation within the batch): InfoNCE plus a KL term that makes two
language views of one query rank the in-batch documents alike.

    L = (1 − α)·InfoNCE(s(q_a), s(p_c)) + α·KL(p_b ‖ p_a),   p_x = softmax_j(cos(s(q_x), s(p_j)))   (unscaled)

with (a, b), a ≠ b, MIMO's pair cycle and the passage language c cycling over the languages in a stream of its own;
α = 0.5, no stop-gradient. Yang et al. (2024), "Language Bias in Multilingual Information Retrieval", MRL workshop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives.base import LossOutput, Objective, ObjectiveSettings, Role
from mimo_ds.objectives.mimo import NEGATIVES_HELP, Negatives
from mimo_ds.objectives.schedules import (
    LAKDA_PASSAGE_STREAM,
    RoleLanguages,
    combine,
    cross_lingual,
    same_language,
)
from mimo_ds.objectives.terms import info_nce, language_kl
from mimo_ds.record_kinds import ROWS


class LaKDASettings(ObjectiveSettings):
    swept = {"alpha": "alpha"}
    kind: Literal["lakda"]
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the language KL term")
    scale: float = Field(20.0, gt=0.0, description="InfoNCE logit scale (1/temperature)")
    negatives: Negatives = Field("local", description=NEGATIVES_HELP)


class LaKDA(Objective):
    kind = "lakda"
    stage = 2
    shards = ROWS
    Settings = LaKDASettings
    student_roles = (Role("query", "query", query=True), Role("query_b", "query", query=True),
                     Role("passage", "passage"))

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return combine(cross_lingual(languages, seed, roles=("query", "query_b")),
                       same_language(languages, seed, roles=("passage",), stream=LAKDA_PASSAGE_STREAM))

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        s = self.settings
        qa, qb, p = student["query"].emb, student["query_b"].emb, student["passage"].emb
        nce = info_nce(qa, p, s.scale, s.negatives)
        kl = language_kl(qa, qb, p)
        loss = (1.0 - s.alpha) * nce + s.alpha * kl
        return LossOutput(loss, {"infonce": nce.detach(), "language_kl": kl.detach()})
