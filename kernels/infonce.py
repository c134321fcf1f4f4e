"""InfoNCE as an autograd Function over two backend primitives, and the public `infonce_loss`.

Contract: loss_i = logsumexp_j(scale·q_i·k_j) − scale·q_i·k_{label_i}, labels defaulting to arange(M) + label_offset
so that local rows can be scored against keys gathered from all ranks (`mimo_ds.distributed.gather_keys`).

Design: the forward pass computes only the per-row LSE (fp32, [M]); the backward pass recomputes score tiles from
(q, k, lse), FlashAttention/Inf-CL style. Liger-style "gradients in the forward pass" was considered and rejected:
a row's probabilities are unknown until its LSE over *all* keys is known, so a fused forward still needs a second
sweep over the keys, i.e. the same FLOPs as recompute-in-backward, while it would also pay for gradients in no-grad
calls (evaluation, logging) and need a fallback for reduction="none".

A backend (`chunked.ChunkedOps`, `triton_infonce.TritonOps`) provides two primitives: `lse` and `probs`, the
g-weighted probabilities of one chunk of rows against all keys. `_backward` is the one sweep over row chunks both
backends share: per chunk P, dq_chunk = scale·(P·K − g·k_label) and dk += Pᵀ·Q_chunk, as GEMMs with fp32 output,
then dk = scale·(dk − Σ_{i: label_i = j} g_i·q_i). dscale = Σ_i q_i·dq_i / scale, so a learnable scale costs no
extra sweep. Gradients nobody asked for (locked keys, frozen rows) are not computed (`ctx.needs_input_grad`). The
row gradient is finished chunk by chunk, so the only full-size temporary is the fp32 key accumulator [N, d].
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import auto
from .chunked import DEFAULT_CHUNK, ChunkedOps

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "triton", "torch", "eager", "compile")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
POS_CHUNK = 4096
_MIXED_GEMM = {"ok": True}  # set False the first time torch refuses a bf16/fp16 GEMM with fp32 output


def _gemm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a·b into fp32 (`out` += a·b when given): 16-bit operands stay on the tensor cores with fp32 output (torch's
    `out_dtype`, CUDA only); fp32 operands, CPU tensors and a torch without `out_dtype` take the up-cast."""
    if a.dtype == b.dtype and a.dtype in (torch.float16, torch.bfloat16) and a.is_cuda and _MIXED_GEMM["ok"]:
        try:
            if out is None:
                return torch.mm(a, b, out_dtype=torch.float32)
            return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        except (RuntimeError, TypeError):
            _MIXED_GEMM["ok"] = False
    a, b = a.float(), b.float()
    return a @ b if out is None else out.addmm_(a, b)


def _add_key_grad(key_grad: Tensor, p: Tensor, q: Tensor, labels: Tensor, g: Tensor) -> None:
    """key_grad += pᵀ·q − (the positive term g_i·q_i at each row's label) for one chunk of rows."""
    _gemm(p.T, q, key_grad)
    key_grad.index_add_(0, labels, (q * g[:, None]).float(), alpha=-1.0)


def _backward(ops, q: Tensor, k: Tensor, s: Tensor, labels: Tensor, pos: Tensor, margin: float | None, lse: Tensor,
              g: Tensor, need_q: bool, need_k: bool, need_s: bool) -> tuple[Tensor | None, ...]:
    """(dq, dk, dscale) by one sweep over row chunks (see the module docstring)."""
    rows = need_q or (need_s and not need_k)
    dq = torch.empty_like(q) if need_q else None
    key_grad = torch.zeros(k.shape, dtype=torch.float32, device=k.device) if need_k else None
    ds = torch.zeros((), dtype=torch.float32, device=q.device) if need_s else None
    chunk = ops.chunk_rows(q.shape[0], k.shape[0], q.dtype)
    for start in range(0, q.shape[0], chunk):
        sl = slice(start, start + chunk)
        p = ops.probs(q[sl], k, s, labels[sl], pos[sl], margin, lse[sl], g[sl])
        if key_grad is not None:
            _add_key_grad(key_grad, p, q[sl], labels[sl], g[sl])
        if rows:
            row_grad = _gemm(p, k)
            row_grad.sub_((k.index_select(0, labels[sl]) * g[sl, None]).float())
            if need_s:
                ds += (row_grad * q[sl]).float().sum()
            if need_q:
                dq[sl] = row_grad.mul_(s)
        del p  # the next chunk's workspace is allocated while `p` still holds this one: two would be alive
    dk = None
    if key_grad is not None:
        if need_s and not rows:
            ds = (key_grad * k).float().sum()
        dk = key_grad.mul_(s).to(k.dtype)
    return dq, dk, ds


def _positive_scores(q: Tensor, k: Tensor, labels: Tensor) -> Tensor:
    """Raw q_i·k_{label_i} in fp32, POS_CHUNK rows at a time: up-casting the whole batch at once made three M×d fp32
    temporaries, the largest allocation of the whole call (192 MiB at M = 16k, d = 1024 on the H100)."""
    if q.shape[0] <= POS_CHUNK:  # one chunk: no output buffer and copy (fixed cost of small calls)
        return (q.float() * k.index_select(0, labels).float()).sum(1)
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[0], POS_CHUNK):
        rows = slice(start, start + POS_CHUNK)
        out[rows] = (q[rows].float() * k.index_select(0, labels[rows]).float()).sum(1)
    return out


class _InfoNCE(torch.autograd.Function):
    """Per-row InfoNCE loss [M] fp32 with hand-written gradients for q, k and a 0-dim scale."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, margin: float | None, ops) -> Tensor:
        s = scale.detach().float()
        pos = _positive_scores(q, k, labels)
        lse = ops.lse(q, k, s, labels, pos, margin)
        ctx.save_for_backward(q, k, s, labels, pos, lse)
        ctx.margin, ctx.ops, ctx.scale_dtype = margin, ops, scale.dtype
        return lse - s * pos

    @staticmethod
    def backward(ctx, g: Tensor):
        q, k, s, labels, pos, lse = ctx.saved_tensors
        need_q, need_k, need_s = ctx.needs_input_grad[:3]
        dq, dk, ds = _backward(ctx.ops, q, k, s, labels, pos, ctx.margin, lse, g.float().contiguous(),
                               need_q, need_k, need_s)
        if ds is not None:
            ds = ds.to(ctx.scale_dtype)
        return dq, dk, ds, None, None, None


def _triton_ops(**options):
    from .triton_infonce import TritonOps  # imported lazily: triton is optional and slow to import

    return TritonOps(**options)


def _fused_ops(q: Tensor):
    """The path that never materialises M×N: Triton on CUDA when triton imports, else the chunked torch path."""
    if not q.is_cuda:
        return ChunkedOps()
    try:
        return _triton_ops()
    except ImportError:
        return ChunkedOps()


def auto_choice(q: Tensor, k: Tensor, *, symmetric: bool = False, margin: float | None = None,
                memory_budget: float | None = None, compile_ok: bool = True) -> tuple[str, str]:
    """What `backend="auto"` runs for these inputs: ("eager" | "compile" | "fused", why). See `kernels/auto.py`.
    A margin on 16-bit CUDA inputs takes the fused path: its mask is then decided on fp32 scores, not bf16 ones."""
    if margin is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return "fused", "a margin on 16-bit inputs: the mask is decided on the fused path's fp32 scores"
    budget = auto.default_budget(q.device) if memory_budget is None else float(memory_budget)
    return auto.choose(q.shape[0], k.shape[0], q.shape[1], budget=budget, table=auto.device_table(q.device),
                       symmetric=symmetric, compile_ok=compile_ok and q.dtype != torch.float64,
                       eager_max_scores=auto.DEFAULT_EAGER_MAX_SCORES if q.is_cuda else 0)


def _select_ops(backend: str, q: Tensor, **triton_options):
    """The backend's primitives (a fused Ops object), or the name of a materialised path ("eager", "compile")."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return ChunkedOps()
    if backend in ("eager", "compile"):
        return backend
    if backend == "auto":
        return _fused_ops(q)
    if q.dtype not in _TRITON_DTYPES:
        raise ValueError(f"the triton backend takes {_TRITON_DTYPES}, got {q.dtype}")
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if q.is_cuda == interpreting:
        raise ValueError("the triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
                         f"before triton is imported (got {q.device}, TRITON_INTERPRET={interpreting})")
    return _triton_ops(**triton_options)


def _check(q: Tensor, k: Tensor, labels: Tensor | None, label_offset: int, reduction: str) -> None:
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"q must be [M, d] and k [N, d] with the same d, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")
    if k.shape[0] == 0:
        raise ValueError("k must hold at least one key")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if labels is None:
        if label_offset < 0 or label_offset + q.shape[0] > k.shape[0]:
            raise ValueError(f"default labels arange(M) + {label_offset} need M + offset <= N, "
                             f"got M={q.shape[0]}, N={k.shape[0]}")
    elif labels.shape != (q.shape[0],):
        raise ValueError(f"labels must be [M]={q.shape[0]}, got {tuple(labels.shape)}")


def _infonce(q: Tensor, k: Tensor, *, scale: Tensor | float, labels: Tensor | None, label_offset: int,
             symmetric: bool, lock_keys: bool, margin: float | None, reduction: str, ops) -> Tensor:
    _check(q, k, labels, label_offset, reduction)
    rows = torch.arange(q.shape[0], device=q.device) if labels is None or symmetric else None
    labels = rows + label_offset if labels is None else labels.to(device=q.device, dtype=torch.long)
    if not isinstance(scale, Tensor):
        scale = torch.tensor(float(scale), dtype=torch.float32, device=q.device)
    elif scale.ndim != 0:
        raise ValueError(f"scale must be a float or a 0-dim tensor, got shape {tuple(scale.shape)}")
    if lock_keys:
        k = k.detach()
    q, k = q.contiguous(), k.contiguous()
    if isinstance(ops, str):  # a materialised path: autograd differentiates it
        fn = auto.materialised if ops == "eager" else auto.compiled()
        loss = fn(q, k, scale if scale.dtype == torch.float64 else scale.float(), labels, rows, margin, symmetric)
        return _reduce(loss, reduction)
    loss = _InfoNCE.apply(q, k, scale, labels, margin, ops)
    if symmetric:
        positives = k.index_select(0, labels)
        loss = 0.5 * (loss + _InfoNCE.apply(positives, q, scale, rows, margin, ops))
    return _reduce(loss, reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def infonce_loss(q: Tensor, k: Tensor, *, scale: Tensor | float = 20.0, labels: Tensor | None = None,
                 label_offset: int = 0, symmetric: bool = False, lock_keys: bool = False,
                 margin: float | None = None, reduction: str = "mean", backend: str = "auto",
                 memory_budget: float | None = None) -> Tensor:
    """InfoNCE of rows q [M, d] against keys k [N, d] without materialising the M×N score matrix.

    loss_i = logsumexp_j(scale·q_i·k_j) − scale·q_i·k_{label_i}; the result is fp32 whatever the input dtype.
    - q, k: bf16/fp16/fp32 (fp64 on the torch backend), already L2-normalised by the caller for cosine scores.
    - scale: a float, or a 0-dim tensor that may require grad (learnable inverse temperature).
    - labels: [M] key index of each row's positive; default arange(M) + label_offset, which is what local rows
      scored against globally gathered keys need (label_offset = this rank's first key, see `gather_keys`).
    - symmetric: average (½·each) with the key→query direction: each row's positive key k_{label_i} is scored
      against the M *local* rows, the positive being row i. With gathered keys the negatives of that direction
      are therefore local only; for global ones gather the rows too and call again with the roles swapped.
    - lock_keys: no gradient to k (LiT style); the key-gradient sweep is skipped.
    - margin: false-negative mask: a negative j of row i is dropped when q_i·k_j > q_i·k_{label_i} + margin
      (raw dot product, i.e. cosine units, as in Qwen3-Embedding); the mask itself is not differentiated.
    - reduction: "mean" | "sum" | "none" (per-row [M]).
    - backend: "auto" picks per call the fastest path that fits `memory_budget` (bytes of extra memory; default
      half the device's free memory) from crossovers measured on this device (`kernels/auto.py`,
      `kernels/crossovers.json`): "eager" or "compile" (the materialised formula, plain or torch.compile'd) while
      the M×N scores fit, "fused" beyond (Triton on CUDA, chunked torch elsewhere); or name one: "eager",
      "compile", "triton", "torch" (chunked).
    """
    if backend == "auto":
        _check(q, k, labels, label_offset, reduction)
        path, _ = auto_choice(q, k, symmetric=symmetric, margin=margin, memory_budget=memory_budget)
        ops = _fused_ops(q) if path == "fused" else path
    else:
        ops = _select_ops(backend, q)
    return _infonce(q, k, scale=scale, labels=labels, label_offset=label_offset, symmetric=symmetric,
                    lock_keys=lock_keys, margin=margin, reduction=reduction, ops=ops)


def infonce_chunked(q: Tensor, k: Tensor, *, scale: Tensor | float = 20.0, labels: Tensor | None = None,
                    label_offset: int = 0, symmetric: bool = False, lock_keys: bool = False,
                    margin: float | None = None, reduction: str = "mean", chunk: int = DEFAULT_CHUNK) -> Tensor:
    """`infonce_loss` on the chunked PyTorch path with an explicit row chunk (peak temporary chunk×N fp32)."""
    return _infonce(q, k, scale=scale, labels=labels, label_offset=label_offset, symmetric=symmetric,
                    lock_keys=lock_keys, margin=margin, reduction=reduction, ops=ChunkedOps(chunk))


def infonce_triton(q: Tensor, k: Tensor, *, scale: Tensor | float = 20.0, labels: Tensor | None = None,
                   label_offset: int = 0, symmetric: bool = False, lock_keys: bool = False,
                   margin: float | None = None, reduction: str = "mean",
                   blocks: tuple[int, int, int] | None = None, workspace_mb: float = 32,
                   lse_splits: int | None = None) -> Tensor:
    """`infonce_loss` on the Triton path, with its knobs exposed.

    - blocks: fixed (BLOCK_M, BLOCK_N, BLOCK_D) instead of autotuning (tests: small blocks in the interpreter,
      each ≥ 16 on a GPU).
    - workspace_mb: the backward's probability workspace [rows, N]; it holds at least 1024 rows whatever the
      budget (see `triton_infonce.chunk_rows`).
    - lse_splits: how many key splits the forward's LSE kernel runs (None: `triton_infonce.lse_splits` decides
      from the rows, the keys and the GPU's multiprocessors).
    """
    ops = _select_ops("triton", q, blocks=blocks, workspace_mb=workspace_mb, splits=lse_splits)
    return _infonce(q, k, scale=scale, labels=labels, label_offset=label_offset, symmetric=symmetric,
                    lock_keys=lock_keys, margin=margin, reduction=reduction, ops=ops)
