"""The gradients of one optimizer step: teacher targets, student passes (direct or cached), the loss, the backward
passes. The trainer then agrees across ranks on whether the step is sound and calls `engine.step()`.

Cached passes (GradCache, Gao et al. 2021) decouple the batch the loss sees from the batch the encoder holds in
memory: (1) embed the whole per-device batch in mini-batch chunks without grad, remembering each chunk's RNG state;
(2) compute the loss on the detached whole-batch embeddings and take its gradient w.r.t. them; (3) re-run each chunk
with grad under the same RNG state (same dropout masks) and back-propagate `⟨output, cached gradient⟩`. The sum of
(3) over chunks is exactly the gradient of the whole-batch loss.

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


def _chunks(tokens: Tokens, size: int, device: torch.device) -> list[Tokens]:
    """The field's chunks of `size` rows, each without its all-padding columns. The field is copied to the device
    once (chunks are views of it) and the columns are found on the loader's CPU mask, so no chunk waits on the
    device to learn its own shape."""
    mask = tokens["attention_mask"]
    on_device = {k: v.to(device, non_blocking=True) for k, v in tokens.items()}
    chunks = []
    for i in range(0, mask.shape[0], size):
        first, last = _columns(mask[i : i + size])
        chunks.append({k: v[i : i + size, first:last] for k, v in on_device.items()})
    return chunks


def _columns(mask: torch.Tensor) -> tuple[int, int]:
    """The first and one-past-last column holding any token: a chunk of short texts is not run at the batch's
    longest length."""
    columns = mask.any(dim=0).nonzero()
    if not len(columns):
        return 0, mask.shape[1]
    return int(columns.min()), int(columns.max()) + 1


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
        student = {role: engine(**_chunks(tokens, len(batch), device)[0]) for role, tokens in batch.student.items()}
    with record_function("mimo:loss"):
        out = objective(student, {k: v.to(device) for k, v in targets.items()})
    with record_function("mimo:backward"):
        engine.backward(out.loss * weight)
    return out


def _cached_backward(engine, objective: Objective, batch: Batch, targets: dict, weight: float,
                     mini_batch: int) -> LossOutput:
    device = engine.device
    chunks = {role: _chunks(tokens, mini_batch, device) for role, tokens in batch.student.items()}
    rng: dict[str, list[RngState]] = {f: [] for f in chunks}
    parts: dict[str, list[Embedded]] = {f: [] for f in chunks}
    with torch.no_grad(), record_function("mimo:student_forward"):
        for f, field_chunks in chunks.items():
            for chunk in field_chunks:
                rng[f].append(RngState.capture())
                parts[f].append(engine(**chunk))
    leaves = {f: _leaf(parts[f]) for f in chunks}
    with record_function("mimo:loss"):
        out = objective(leaves, {k: v.to(device) for k, v in targets.items()})
        (out.loss * weight).backward()
    with record_function("mimo:backward"):
        for f, field_chunks in chunks.items():
            start = 0
            for chunk, state in zip(field_chunks, rng[f]):
                n = chunk["input_ids"].shape[0]
                with state.replay():
                    again = engine(**chunk)
                surrogate = _surrogate(again, leaves[f], start, start + n)
                engine.backward(surrogate)
                start += n
    return LossOutput(out.loss.detach(), out.parts)


def _leaf(parts: list[Embedded]) -> Embedded:
    emb = torch.cat([p.emb for p in parts]).requires_grad_(True)
    proj = None
    if parts[0].proj is not None:
        proj = torch.cat([p.proj for p in parts]).requires_grad_(True)
    return Embedded(emb, proj)


def _surrogate(again: Embedded, leaf: Embedded, start: int, stop: int) -> torch.Tensor:
    """⟨output, ∂L/∂output⟩ for one chunk: its gradient w.r.t. the parameters is the chunk's share of ∂L/∂θ."""
    total = again.emb.new_zeros(())
    if leaf.emb.grad is not None:
        total = total + (again.emb * leaf.emb.grad[start:stop]).sum()
    if again.proj is not None and leaf.proj is not None and leaf.proj.grad is not None:
        total = total + (again.proj * leaf.proj.grad[start:stop]).sum()
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
            if mini_batch is None or mini_batch >= len(batch):
                out = _direct_backward(engine, objective, batch, targets, weight)
            else:
                out = _cached_backward(engine, objective, batch, targets, weight, mini_batch)
            for name, value in {"total": out.loss, **out.parts}.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) * weight
    return totals
