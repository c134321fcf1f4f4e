"""gather_keys: 2 gloo ranks, distributed loss gradient == single-process full-batch gradient (module convention).

Each rank owns a slice of a global batch; a shared linear "encoder" W and a learnable scale are replicated. The
ranks compute the local-mean loss of their rows against the gathered keys, backpropagate, and average parameter
gradients as DeepSpeed does. That average must equal the gradient of the full-batch loss computed in one process.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mimo_ds.distributed import gather_keys
from mimo_ds.kernels import infonce_loss, infonce_reference
from ports import free_port

WORLD = 2
DIM_IN, DIM = 7, 5
# (name, rows per rank, hard negatives per rank, loss options)
CASES = [
    ("plain", [6, 6], [0, 0], {}),
    ("hard_negatives_margin", [5, 5], [3, 1], {"margin": 0.05}),
    ("locked_keys", [4, 4], [0, 0], {"lock_keys": True}),
    ("uneven_sum", [3, 6], [2, 0], {"reduction": "sum"}),
]


def _data(seed: int, rows: list[int], negs: list[int]):
    g = torch.Generator().manual_seed(seed)
    xq = [torch.randn(m, DIM_IN, generator=g, dtype=torch.float64) for m in rows]
    xk = [torch.randn(m + h, DIM_IN, generator=g, dtype=torch.float64) for m, h in zip(rows, negs)]
    w = torch.randn(DIM_IN, DIM, generator=g, dtype=torch.float64)
    return xq, xk, w


def _params(w: torch.Tensor):
    return w.clone().requires_grad_(), torch.tensor(10.0, dtype=torch.float64, requires_grad=True)


def _full_batch_grads(seed: int, rows, negs, opts) -> list[torch.Tensor]:
    """One process, whole batch, plain materialised formula (independent of gather_keys and the fused paths)."""
    xq, xk, w0 = _data(seed, rows, negs)
    w, scale = _params(w0)
    q = F.normalize(torch.cat(xq) @ w, dim=1)
    k = F.normalize(torch.cat(xk) @ w, dim=1)
    starts = torch.tensor([0, *[m + h for m, h in zip(rows, negs)]]).cumsum(0)[:-1]
    labels = torch.cat([s + torch.arange(m) for s, m in zip(starts.tolist(), rows)])
    loss = infonce_reference(q, k, scale=scale, labels=labels, **opts)
    if opts.get("reduction") == "sum":
        loss = loss / sum(rows)
    return list(torch.autograd.grad(loss, (w, scale)))


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for seed, (name, rows, negs, opts) in enumerate(CASES):
            xq, xk, w0 = _data(seed, rows, negs)
            w, scale = _params(w0)
            q = F.normalize(xq[rank] @ w, dim=1)
            k_all, offset = gather_keys(F.normalize(xk[rank] @ w, dim=1))
            loss = infonce_loss(q, k_all, scale=scale, label_offset=offset, backend="torch", **opts)
            if opts.get("reduction") == "sum":  # uneven rows: the documented share of the global mean
                loss = loss * WORLD / sum(rows)
            grads = torch.autograd.grad(loss, (w, scale))
            averaged = []
            for grad in grads:  # DeepSpeed/DDP averaging of parameter gradients
                grad = grad.clone()
                dist.all_reduce(grad)
                averaged.append(grad / WORLD)
            results[name] = (offset, k_all.shape[0], averaged)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_distributed_gradient_equals_full_batch(two_rank_results, case):
    name, rows, negs, opts = case
    expected = _full_batch_grads(CASES.index(case), rows, negs, opts)
    sizes = [m + h for m, h in zip(rows, negs)]
    for rank, results in enumerate(two_rank_results):
        offset, n_all, grads = results[name]
        assert offset == sum(sizes[:rank])
        assert n_all == sum(sizes)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_without_process_group_is_identity():
    k = torch.randn(4, 3, requires_grad=True)
    k_all, offset = gather_keys(k)
    assert k_all is k and offset == 0
