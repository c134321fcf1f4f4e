"""Teacher-free baselines on the same rows: InfoNCE on same-language pairs, and XLCO on cross-lingual pairs.

    L = −mean_i log softmax_j(scale·cos(s(q_i), s(p_j)))[i]

with in-batch negatives (van den Oord et al. 2018; sentence-transformers' MultipleNegativesRankingLoss), scale 20.
The two differ only in their language schedule: InfoNCE shows query and passage in one language a (cycling over the
languages), XLCO ("cross-lingual contrastive") in a and b ≠ a, exactly MIMO's assignment, so XLCO is MIMO's stage 2
with λ = 1 and no stage 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives.base import LossOutput, Objective, ObjectiveSettings
from mimo_ds.objectives.mimo import NEGATIVES_HELP, QUERY_AND_PASSAGE, Negatives
from mimo_ds.objectives.schedules import RoleLanguages, cross_lingual, same_language
from mimo_ds.objectives.terms import info_nce
from mimo_ds.record_kinds import ROWS


class InfoNCESettings(ObjectiveSettings):
    kind: Literal["infonce"]
    scale: float = Field(20.0, gt=0.0, description="InfoNCE logit scale (1/temperature)")
    negatives: Negatives = Field("local", description=NEGATIVES_HELP)


class XLCOSettings(InfoNCESettings):
    kind: Literal["xlco"]  # type: ignore[assignment]


class InfoNCE(Objective):
    kind = "infonce"
    stage = 2
    shards = ROWS
    Settings = InfoNCESettings
    student_roles = QUERY_AND_PASSAGE

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return same_language(languages, seed)

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        loss = info_nce(student["query"].emb, student["passage"].emb, self.settings.scale, self.settings.negatives)
        return LossOutput(loss, {"infonce": loss.detach()})


class XLCO(InfoNCE):
    kind = "xlco"
    Settings = XLCOSettings

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages:
        return cross_lingual(languages, seed)
