"""The gradients of one optimizer step: teacher targets, student passes (direct or cached), the loss, the backward
passes. The trainer then agrees across ranks on whether the step is sound and calls `engine.step()`.

Cached passes (GradCache, Gao et al. 2021) decouple the batch the loss sees from the batch the encoder holds in
memory: (1) embed the whole per-device batch in mini-batch chunks without grad, remembering each chunk's RNG state;
(2) compute the loss on the detached whole-batch embeddings and take its gradient w.r.t. them; (3) re-run each chunk
with grad under the same RNG state (same dropout masks) and back-propagate `⟨output, cached gradient⟩`. The sum of
(3) over chunks is exactly the gradient of the whole-batch loss.

The chunks are cut by length (`mimo_ds.chunking`): each field's rows ordered by real token count, so a chunk is run at
the width its own texts need, not at that of one long text that arrived among short ones. The embeddings go back to
the batch's row order before the loss, and each replayed chunk takes the cached gradient of its own rows, so the
grouping changes no number (except through dropout, whose masks the replay reproduces per chunk).

Every backward of one optimizer step (all micro-batches, all chunks) runs inside ONE
`engine.coalesce_grad_reduction()` block, so ZeRO-2/3 reduces gradients once per step; DeepSpeed ≥ 0.19.2 requires
that one block never spans two optimizer steps (the block was added in DeepSpeed PR #7992 because chunked backward
passes under ZeRO-2/3 otherwise reduce, or assert, once per backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from mimo_ds.batch import Batch, Embedded, Tokens
from mimo_ds.chunking import chunk_rows, columns, plan_chunks
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import LossOutput, Objective


@dataclass
class RngState:
    """CPU and (when present) CUDA generator states, captured before a chunk's first pass and restored for its replay."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> "RngState":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run a block under this state, leaving the global generators as they were afterwards."""
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _chunks(tokens: Tokens, size: int, device: torch.device) -> tuple[torch.Tensor, list[tuple[torch.Tensor, Tokens]]]:
    """The field's length-grouped chunks (`mimo_ds.chunking.plan_chunks`): the plan's row order on the device, and
    per chunk its row positions in the batch and its tokens. The field goes to the device once, already in chunk
    order, so each chunk is a view of it."""
    plan = plan_chunks(tokens["attention_mask"], size)
    ordered = {k: v[plan.order].to(device, non_blocking=True) for k, v in tokens.items()}
    order = plan.order.to(device, non_blocking=True)
    return order, [(order[c.start : c.stop], {k: v[c.start : c.stop, c.first : c.last] for k, v in ordered.items()})
                   for c in plan.chunks]


def _whole(tokens: Tokens, device: torch.device) -> Tokens:
    """The whole field in row order without its all-padding columns: the direct pass's one chunk."""
    first, last = columns(tokens["attention_mask"])
    return {k: v[:, first:last].to(device, non_blocking=True) for k, v in tokens.items()}


def teacher_targets(objective: Objective, batch: Batch, teacher: Teacher | None) -> dict[str, torch.Tensor]:
    """Teacher embeddings for the objective's teacher roles: from a cache in the batch, else a live forward."""
    targets = {}
    for role in objective.teacher_roles:
        cached = batch.teacher_embeddings.get(role.name)
        if cached is not None:
            targets[role.name] = cached.float()
        elif teacher is None:
            raise RuntimeError(f"objective needs '{role.name}' but there is neither a teacher nor a cached embedding")
        else:
            with record_function("mimo:teacher"):
                targets[role.name] = teacher.encode_tokens(batch.teacher[role.name])
    return targets


def _direct_backward(engine, objective: Objective, batch: Batch, targets: dict, weight: float) -> LossOutput:
    device = engine.device
    with record_function("mimo:student_forward"):
        student = {role: engine(**_whole(tokens, device)) for role, tokens in batch.student.items()}
    with record_function("mimo:loss"):
        out = objective(student, {k: v.to(device) for k, v in targets.items()})
    with record_function("mimo:backward"):
        engine.backward(out.loss * weight)
    return out


def _cached_backward(engine, objective: Objective, batch: Batch, targets: dict, weight: float,
                     mini_batch: int) -> LossOutput:
    device = engine.device
    fields = {role: _chunks(tokens, mini_batch, device) for role, tokens in batch.student.items()}
    rng: dict[str, list[RngState]] = {f: [] for f in fields}
    parts: dict[str, list[Embedded]] = {f: [] for f in fields}
    with torch.no_grad(), record_function("mimo:student_forward"):
        for f, (_, chunks) in fields.items():
            for _, chunk in chunks:
                rng[f].append(RngState.capture())
                parts[f].append(engine(**chunk))
    leaves = {f: _leaf(parts[f], order) for f, (order, _) in fields.items()}
    with record_function("mimo:loss"):
        out = objective(leaves, {k: v.to(device) for k, v in targets.items()})
        (out.loss * weight).backward()
    with record_function("mimo:backward"):
        for f, (_, chunks) in fields.items():
            for (rows, chunk), state in zip(chunks, rng[f]):
                with state.replay():
                    again = engine(**chunk)
                engine.backward(_surrogate(again, leaves[f], rows))
    return LossOutput(out.loss.detach(), out.parts)


def _leaf(parts: list[Embedded], order: torch.Tensor) -> Embedded:
    """The chunks' embeddings put back in the batch's row order (row `order[i]` is the i-th embedded), as leaves
    whose gradient the loss fills: the objective sees the same [B, d] tensors whatever the grouping."""
    back = torch.argsort(order)
    emb = torch.cat([p.emb for p in parts])[back].requires_grad_(True)
    proj = None
    if parts[0].proj is not None:
        proj = torch.cat([p.proj for p in parts])[back].requires_grad_(True)
    return Embedded(emb, proj)


def _surrogate(again: Embedded, leaf: Embedded, rows: torch.Tensor) -> torch.Tensor:
    """⟨output, ∂L/∂output⟩ for one chunk holding the batch's `rows`: its gradient w.r.t. the parameters is the
    chunk's share of ∂L/∂θ."""
    total = again.emb.new_zeros(())
    if leaf.emb.grad is not None:
        total = total + (again.emb * leaf.emb.grad[rows]).sum()
    if again.proj is not None and leaf.proj is not None and leaf.proj.grad is not None:
        total = total + (again.proj * leaf.proj.grad[rows]).sum()
    return total


def accumulate_gradients(
    engine, objective: Objective, micro_batches: list[Batch], teacher: Teacher | None, mini_batch: int | None
) -> dict[str, float]:
    """Every backward of one optimizer step, reduced once; returns the mean total loss and its parts."""
    weight = 1.0 / len(micro_batches)
    totals: dict[str, float] = {}
    with engine.coalesce_grad_reduction():
        for batch in micro_batches:
            targets = teacher_targets(objective, batch, teacher)
            rows = chunk_rows(mini_batch, len(batch))
            if rows == len(batch):
                out = _direct_backward(engine, objective, batch, targets, weight)
            else:
                out = _cached_backward(engine, objective, batch, targets, weight, rows)
            for name, value in {"total": out.loss, **out.parts}.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) * weight
    return totals
