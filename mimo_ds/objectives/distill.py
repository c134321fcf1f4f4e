"""Stage 1, cross-lingual distillation warm-up: the student learns to place a text where the teacher places its
English side.

    L = mean_i d(P·s(x_i), t(e_i)),   d = 1 − cos (MIMO), or MSE / L2

over parallel pairs (x in language ℓ, e its English side; en→en identity pairs are ordinary pairs), with P the
projection into the teacher's space. The multilingual knowledge distillation of Reimers & Gurevych (2020, "Making
Monolingual Sentence Embeddings Multilingual using Knowledge Distillation") with MIMO's cosine distance. The teacher
sees the English side with no prompt: stage 1 has no queries.
"""

from __future__ import annotations

from typing import Literal

import torch

from mimo_ds.batch import Embedded
from mimo_ds.objectives.base import LossOutput, Objective, ObjectiveSettings, Role
from mimo_ds.objectives.terms import distill_loss
from mimo_ds.record_kinds import PAIRS

Distance = Literal["cosine", "mse", "l2"]


class DistillSettings(ObjectiveSettings):
    kind: Literal["distill"]
    distance: Distance = "cosine"


class Distill(Objective):
    kind = "distill"
    stage = 1
    shards = PAIRS
    Settings = DistillSettings
    student_roles = (Role("student", "text"),)
    teacher_roles = (Role("teacher", "en"),)

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        loss = distill_loss(student["student"].proj, teacher["teacher"], self.settings.distance)
        return LossOutput(loss, {"distill": loss.detach()})
