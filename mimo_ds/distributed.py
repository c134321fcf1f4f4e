"""The collectives of a training step: cross-rank negatives, and the agreements by which ranks stop together.

Cross-rank negatives: gather keys from every rank with autograd, keep the rows (queries) local.

Gradient-scale convention (chosen so that nothing needs rescaling under DeepSpeed):
- Each rank computes its loss as the MEAN over its own local rows, scored against the gathered keys
  (`infonce_loss(q_local, k_all, label_offset=offset)`).
- The backward of `gather_keys` returns to each rank the SUM over all ranks of the gradients with respect to that
  rank's keys (a reduce-scatter with SUM): rank r's keys receive the terms of every rank's loss they took part in.
  There is no ×world_size (Tevatron, contrastors) and no ÷world_size anywhere.
- DeepSpeed (like DDP) AVERAGES parameter gradients over ranks. Averaging the per-rank gradients of
  L_r = mean_{i in rank r} loss_i gives exactly the gradient of the single-process full-batch loss
  L = mean over all W·M rows of loss_i against all W keys blocks: (1/W)·Σ_r ∂L_r/∂θ = ∂L/∂θ, because every
  cross-rank term reaches its owner through the SUM in the gather's backward.
- This holds when every rank has the same number of rows. With uneven rows use reduction="sum" and divide by
  (global row count / world_size) instead of the local count; the loss each rank logs is then its share.
Under plain DDP/DeepSpeed, without this SUM (a gather that only keeps the local slot's gradient), the key gradient
would be 1/W too small, which is the bug Tevatron and contrastors patch with a ×world_size factor on the loss.

`tests/test_gather.py` checks the equality above on 2 gloo ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def init_process_group() -> None:
    """DeepSpeed's `init_distributed`, minus the CPU shared-memory comm op it would JIT-build first.

    On the CPU accelerator DeepSpeed compiles `deepspeed_shm_comm` (about 24 s on a fresh machine) that only its
    `inference_all_reduce` uses; training never calls it. Worse, a build killed part-way (kill -9, a node lost) leaves
    torch's extension lock behind, and every later start on that machine waits on it forever with no message.
    Marking the op incompatible makes DeepSpeed fall back to the process group, which training uses anyway.
    """
    import deepspeed

    if deepspeed.get_accelerator().device_name() == "cpu":
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed()


def _active(group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _GatherKeys(torch.autograd.Function):
    """All-gather of [n_r, d] blocks of possibly different n_r; backward: SUM-reduce, then this rank's slice."""

    @staticmethod
    def forward(ctx, k: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> Tensor:
        rank = dist.get_rank(group)
        longest = max(sizes)
        padded = k.new_zeros(longest, k.shape[1])
        padded[: k.shape[0]] = k
        blocks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(blocks, padded.contiguous(), group=group)
        ctx.sizes, ctx.group, ctx.rank, ctx.longest = sizes, group, rank, longest
        return torch.cat([block[:n] for block, n in zip(blocks, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        sizes, longest = ctx.sizes, ctx.longest
        padded = grad.new_zeros(len(sizes), longest, grad.shape[1], dtype=torch.float32)
        for r, piece in enumerate(grad.float().split(sizes)):
            padded[r, : sizes[r]] = piece
        if dist.get_backend(ctx.group) == dist.Backend.GLOO:  # gloo has no reduce-scatter
            dist.all_reduce(padded, group=ctx.group)
            mine = padded[ctx.rank]
        else:
            mine = padded.new_empty(longest, grad.shape[1])
            dist.reduce_scatter_tensor(mine, padded.reshape(-1, grad.shape[1]), group=ctx.group)
        return mine[: sizes[ctx.rank]].to(grad.dtype), None, None


def gather_keys(k: Tensor, group: dist.ProcessGroup | None = None) -> tuple[Tensor, int]:
    """Keys of all ranks, concatenated in rank order, and the index of this rank's first key.

    k: this rank's keys [n, d] (positives first, then any hard negatives); ranks may hold different n.
    Returns (k_all [Σ n_r, d], label_offset): local row i's positive is k_all[label_offset + i].
    Differentiable: see the module docstring for the gradient convention (SUM over ranks, loss = local mean).
    Without an initialised process group, or with one rank, returns (k, 0) unchanged.
    """
    if not _active(group):
        return k, 0
    world = dist.get_world_size(group)
    count = torch.tensor([k.shape[0]], dtype=torch.long, device=k.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c.item()) for c in counts]
    offset = sum(sizes[: dist.get_rank(group)])
    return _GatherKeys.apply(k, sizes, group), offset


def agree_any(flags: list[bool], device: torch.device, group: dist.ProcessGroup | None = None) -> list[bool]:
    """For each flag, whether any rank set it (one all-reduce of a tiny tensor: how ranks stop together)."""
    if not _active(group):
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [bool(v) for v in t.tolist()]


def first_rank(flag: bool, device: torch.device, group: dist.ProcessGroup | None = None) -> int | None:
    """The lowest rank whose flag is set, or None when no rank's is (collective)."""
    if not _active(group):
        return 0 if flag else None
    world = dist.get_world_size(group)
    t = torch.tensor([dist.get_rank(group) if flag else world], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return None if int(t.item()) == world else int(t.item())
