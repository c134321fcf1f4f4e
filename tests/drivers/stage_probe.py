"""Runs inside 1 or 2 ranks (python / torchrun) and writes what the trainer tests compare.

probe grads: gradients of one step from the same start and RNG, by three ways of running the encoder:
  direct   — the whole per-device batch in one pass (only comparable without dropout);
  cached   — mimo_ds.step's cached passes (no-grad pass, loss on detached embeddings, replay with restored RNG);
  chunked  — the plain computation: every chunk (the step's length-grouped ones) run WITH grad and kept, put back in
             row order, one backward of the whole-batch loss.
probe teacher: the teacher's parameters before and after a few steps, and whether ZeRO manages any of them.
probe init: the student's fp32 state right after setup (to compare with what init_from holds).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from mimo_ds.batch import Embedded
from mimo_ds.config import load_config
from mimo_ds.models.stage_output import gather_fp32_state
from mimo_ds.step import _chunks, accumulate_gradients, teacher_targets
from mimo_ds.trainer import setup, train


def _full_grads(engine) -> dict[str, torch.Tensor]:
    return {n: safe_get_full_grad(p).detach().float().cpu().clone() for n, p in engine.module.named_parameters()}


def _chunked_with_grad(engine, objective, batch, teacher, mini_batch):
    targets = teacher_targets(objective, batch, teacher)
    with engine.coalesce_grad_reduction():
        student = {}
        for role, tokens in batch.student.items():
            order, chunks = _chunks(tokens, mini_batch, engine.device)  # the step's grouping: the same dropout masks
            parts = [engine(**c) for _, c in chunks]
            back = torch.argsort(order)  # chunk order → the batch's row order
            proj = torch.cat([p.proj for p in parts])[back] if parts[0].proj is not None else None
            student[role] = Embedded(torch.cat([p.emb for p in parts])[back], proj)
        out = objective(student, targets)
        engine.backward(out.loss)


def probe_grads(session, out: Path) -> None:
    batch = next(iter(session.loader))
    mini = session.cfg.batch.mini_batch
    result = {}
    for mode in ("direct", "cached", "chunked"):
        torch.manual_seed(1234)
        if mode == "chunked":
            _chunked_with_grad(session.engine, session.objective, batch, session.teacher, mini)
        else:
            accumulate_gradients(session.engine, session.objective, [batch], session.teacher,
                                 None if mode == "direct" else mini)
        result[mode] = _full_grads(session.engine)
        session.engine.optimizer.zero_grad()
    if session.rank == 0:
        torch.save(result, out)


def probe_teacher(session, out: Path) -> None:
    params = dict(session.teacher.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    report = {
        "zero_managed": sorted(n for n, p in params.items() if hasattr(p, "ds_id")),
        "requires_grad": sorted(n for n, p in params.items() if p.requires_grad),
        "empty": sorted(n for n, p in params.items() if p.numel() == 0),
        "training_mode": session.teacher.model.training,
        "student_zero_managed": all(hasattr(p, "ds_id") for p in session.engine.module.parameters()),
    }
    history = train(session)
    report["changed"] = sorted(n for n, p in params.items() if not torch.equal(p.detach(), before[n]))
    report["losses"] = [h["loss/total"] for h in history if "loss/total" in h]
    if session.rank == 0:
        out.write_text(json.dumps(report))


def probe_init(session, out: Path) -> None:
    state = gather_fp32_state(session.engine.module)
    if session.rank == 0:
        torch.save(state, out)


def main() -> None:
    what, config, out, *overrides = sys.argv[1:]
    session = setup(load_config(config, overrides))
    {"grads": probe_grads, "teacher": probe_teacher, "init": probe_init}[what](session, Path(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
