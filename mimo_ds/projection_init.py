"""`projection.init: lstsq`: P starts as the ridge fit from the start student's embeddings to the teacher's.

The paper starts P at random, so stage 1's first steps spend the student's gradient on undoing a random rotation of
its space: with a small step budget that pulls the student's native geometry toward whatever the random P demands.
A closed-form fit on a sample of the stage-1 pairs starts P where the student already is, so the first gradients
carry only what the linear map cannot. A deviation from the paper, off by default (docs/training.md).

The fit is collective: every rank embeds its own share of the sample (its loader's first batches), the pairs are
gathered onto every rank in rank order, and every rank solves the same float64 system, so all ranks hold the same P
without a broadcast; under ZeRO-3 the parameters are gathered for the forward passes and for the write.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mimo_ds.batch import Batch
from mimo_ds.config import ProjectionConfig
from mimo_ds.models.student import Student
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import Objective
from mimo_ds.step import teacher_targets


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W [d_y, d_x] and b [d_y] minimising ‖x Wᵀ + b − y‖² + λ‖W‖² (the bias unpenalised), with
    λ = ridge · trace(G) / d_x for the centred Gram matrix G = x̄ᵀx̄, so `ridge` does not depend on the embeddings'
    scale. Solved in float64 through the centred normal equations; returned in float32."""
    x64, y64 = x.double(), y.double()
    x_mean, y_mean = x64.mean(dim=0), y64.mean(dim=0)
    xc, yc = x64 - x_mean, y64 - y_mean
    gram = xc.T @ xc
    penalty = ridge * torch.trace(gram) / gram.shape[0]
    weight_t = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    bias = y_mean - x_mean @ weight_t
    return weight_t.T.float().contiguous(), bias.float()


def sample_pairs(student: Student, batches: Iterable[Batch], objective: Objective, teacher: Teacher | None,
                 rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(student embeddings, teacher embeddings) of at least `rows` rows (or all the batches hold), in eval mode.
    The caller gathers the parameters under ZeRO-3."""
    (student_role,), (teacher_role,) = objective.student_roles, objective.teacher_roles
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for batch in batches:
        tokens = {k: v.to(device) for k, v in batch.student[student_role.name].items()}
        xs.append(student(tokens["input_ids"], tokens["attention_mask"]).emb.cpu())
        ys.append(teacher_targets(objective, batch, teacher)[teacher_role.name].float().cpu())
        if sum(len(x) for x in xs) >= rows:
            break
    return torch.cat(xs)[:rows], torch.cat(ys)[:rows]


def fit_projection(student: Student, batches: Iterable[Batch], objective: Objective, teacher: Teacher | None,
                   cfg: ProjectionConfig, device: torch.device) -> dict[str, float]:
    """Collective: set P to the ridge fit on `cfg.samples` pairs over all ranks (each rank reads its share from
    `batches`); returns the fit's mean distillation distance (1 − cos) on those pairs, and a random P's, for the log."""
    import deepspeed

    if student.projection is None:
        raise ValueError("projection.init: lstsq needs an objective with a teacher (there is no projection to fit)")
    world = dist.get_world_size() if dist.is_initialized() else 1
    params = list(student.parameters())
    zero3 = hasattr(params[0], "ds_id")
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), deepspeed.zero.GatheredParameters(params, enabled=zero3):
            x, y = sample_pairs(student, batches, objective, teacher, math.ceil(cfg.samples / world), device)
            random_distance = _distance(student.projection(x.to(device, student.projection.weight.dtype)).cpu(), y)
    finally:
        student.train(was_training)
    if world > 1:
        shares: list = [None] * world
        dist.all_gather_object(shares, (x, y))
        x, y = torch.cat([s[0] for s in shares]), torch.cat([s[1] for s in shares])
    weight, bias = ridge_fit(x, y, cfg.ridge)
    projection = student.projection
    with deepspeed.zero.GatheredParameters([projection.weight, projection.bias], modifier_rank=0, enabled=zero3):
        with torch.no_grad():
            projection.weight.copy_(weight)
            projection.bias.copy_(bias)
    stats = {"pairs": float(len(x)), "fit_distance": _distance(x @ weight.T + bias, y),
             "random_distance": random_distance}
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"projection: lstsq fit on {len(x)} pairs (ridge {cfg.ridge}); mean 1 − cos on them "
              f"{stats['fit_distance']:.4f} (the random P's: {random_distance:.4f}, this rank's pairs)",
              file=sys.stderr)
    return stats


def _distance(projected: torch.Tensor, target: torch.Tensor) -> float:
    return float((1 - F.cosine_similarity(projected.float(), target.float(), dim=-1)).mean())
