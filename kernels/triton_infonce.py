"""Triton kernels for the InfoNCE primitives; same contract and notation as `chunked.py`.

Both kernels stream score tiles z = scale·q·kᵀ of BLOCK_M rows × BLOCK_N keys, each tile a GEMM whose inner loop
runs over d in BLOCK_D slices (d up to thousands does not have to fit in registers):
- `_lse_kernel`, one program per row block and key split: online max/sum over the split's key tiles (base-2
  exponentials, fp32); the splits' partial max/sum [splits, M] are merged after (`lse_splits`: one split when the
  row blocks alone fill the GPU, more when few local rows meet many gathered keys). Nothing M×N is written.
- `_probs_kernel`, one program per tile of a chunk of rows × all keys: g·exp(z − lse) in the input dtype into a
  bounded workspace [chunk, N]; the backward driver (`infonce.py`) turns each chunk into both gradients with two
  plain GEMMs (cuBLAS, bf16/fp16 operands, fp32 output). 8MNd FLOPs per forward+backward in all, each at GEMM
  rate; the price is the workspace (`workspace_mb`, at least MIN_CHUNK rows) and an fp32 key-gradient accumulator.
  A fully fused backward (nothing M×N written: row- and key-parallel recompute sweeps accumulating [block, d] fp32
  in global memory, 10MNd) was built and measured 3.8-4.8× slower on an H100 (docs/kernel.md), and removed.

The margin mask compares raw dot products (q·k_j > q·k_pos + margin, label column always kept). fp32 inputs use
IEEE fp32 dots, not tf32. Under TRITON_INTERPRET=1 (CPU tests) tiles are up-cast to fp32 before `tl.dot`, because
the interpreter multiplies bf16 bit patterns as integers, and autotuning is off (one config: the `blocks`
argument, default 16×16×16); on GPU the kernels are autotuned unless `blocks` is given.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEFAULT_INTERPRET_BLOCKS = (16, 16, 16)


@triton.jit
def _scores(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Raw fp32 dot products of a BLOCK_M × BLOCK_N tile, looping over d."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        offs = start + tl.arange(0, BLOCK_D)
        d_ok = offs < D
        q = tl.load(Q + rows[:, None] * stride_q + offs[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(K + cols[:, None] * stride_k + offs[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        acc = tl.dot(q, tl.trans(k), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _kept(raw, row_ok, cols, col_ok, lbl, pos, margin, HAS_MARGIN: tl.constexpr):
    """Tile entries that enter the softmax: in range, and not dropped by the false-negative margin."""
    keep = row_ok[:, None] & col_ok[None, :]
    if HAS_MARGIN:
        keep = keep & ((raw <= pos[:, None] + margin) | (cols[None, :] == lbl[:, None]))
    return keep


@triton.jit
def _lse_kernel(Q, K, LBL, POS, SCALE, PMAX, PSUM, M, N, D, stride_q, stride_k, margin, TUNE_M, TUNE_N,
                KEYS_PER_SPLIT, HAS_MARGIN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Running max and sum (base 2) of one row block over one split of the keys, into PMAX/PSUM [split, M]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows = rows.to(tl.int64)
    first = tl.program_id(1) * KEYS_PER_SPLIT
    last = tl.minimum(first + KEYS_PER_SPLIT, N)
    scale2 = tl.load(SCALE) * 1.4426950408889634
    lbl = tl.load(LBL + rows, mask=row_ok, other=-1)
    pos = tl.load(POS + rows, mask=row_ok, other=0.0)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(first, last, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < last
        cols = cols.to(tl.int64)
        raw = _scores(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k,
                      BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
        keep = _kept(raw, row_ok, cols, col_ok, lbl, pos, margin, HAS_MARGIN)
        z2 = tl.where(keep, raw * scale2, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z2, 1))
        safe_max = tl.where(new_max > float("-inf"), new_max, 0.0)
        run_sum = run_sum * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(z2 - safe_max[:, None]), 1)
        run_max = new_max
    out = tl.program_id(1).to(tl.int64) * M + rows
    tl.store(PMAX + out, run_max, mask=row_ok)
    tl.store(PSUM + out, run_sum, mask=row_ok)


@triton.jit
def _probs_kernel(Q, K, LBL, POS, SCALE, LSE, G, P, M, N, D, stride_q, stride_k, stride_p, margin, TUNE_M, TUNE_N,
                  HAS_MARGIN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One BLOCK_M × BLOCK_N tile of g_i·p_ij into the workspace P (rows of this chunk, all keys)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows = rows.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    cols = cols.to(tl.int64)
    scale2 = tl.load(SCALE) * 1.4426950408889634
    lbl = tl.load(LBL + rows, mask=row_ok, other=-1)
    pos = tl.load(POS + rows, mask=row_ok, other=0.0)
    lse2 = tl.load(LSE + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    raw = _scores(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k,
                  BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
    keep = _kept(raw, row_ok, cols, col_ok, lbl, pos, margin, HAS_MARGIN)
    p = tl.where(keep, tl.exp2(raw * scale2 - lse2[:, None]), 0.0) * g[:, None]
    tl.store(P + rows[:, None] * stride_p + cols[None, :], p.to(P.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _gpu_configs() -> list[triton.Config]:
    shapes = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (64, 64, 64, 4, 4), (128, 128, 32, 8, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for m, n, d, w, s in shapes]


def _tile_configs() -> list[triton.Config]:
    """GEMM-shaped tiles for the one-tile-per-program probability kernel (Hopper-sized first)."""
    shapes = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
              (64, 256, 64, 4, 4), (128, 64, 64, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for m, n, d, w, s in shapes]


def _tuned(kernel, configs):
    """Autotuned variant of a kernel on GPU, None in the interpreter. One autotune per (size bucket, D, flags,
    dtypes): M and N enter as powers of two capped at TUNE_CAP (`_bucket`), because a tuning run times every config
    on the real arguments, and at M = N = 256k one LSE trial takes a second."""
    if INTERPRET:
        return None
    return triton.autotune(configs=configs(), key=["TUNE_M", "TUNE_N", "D", "HAS_MARGIN", "PRECISION"])(kernel)


_TUNED = {
    _lse_kernel: _tuned(_lse_kernel, _gpu_configs),
    _probs_kernel: _tuned(_probs_kernel, _tile_configs),
}
MIN_CHUNK = 1024
TUNE_CAP = 65536


def _bucket(size: int) -> int:
    return min(triton.next_power_of_2(size), TUNE_CAP)


def _launch(kernel, grid, args: tuple, m: int, n: int, margin: float | None, dtype: torch.dtype,
            blocks: tuple[int, int, int] | None, **extra) -> None:
    """Launch `kernel` on grid(meta) over an M × N problem, autotuned unless blocks are given or interpreting."""
    flags = {"TUNE_M": _bucket(m), "TUNE_N": _bucket(n), "HAS_MARGIN": margin is not None, "UPCAST": INTERPRET,
             "PRECISION": "ieee" if dtype == torch.float32 or INTERPRET else "tf32", **extra}
    tuned = _TUNED[kernel]
    if blocks is None and tuned is not None:
        tuned[grid](*args, **flags)
        return
    bm, bn, bd = blocks or DEFAULT_INTERPRET_BLOCKS
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}
    kernel[grid(meta)](*args, **flags, **meta)


def lse_splits(m: int, n: int, multiprocessors: int | None) -> int:
    """Key splits for the LSE kernel: one while the 128-row blocks fill every multiprocessor; else enough splits for
    about two programs per multiprocessor, each split keeping at least 2048 keys. The profile that asked for it:
    M = 8192 rows against 65536 keys ran 64 programs on the H100's 132 multiprocessors, at 60% of the LSE rate
    reached with M = 65536."""
    blocks = triton.cdiv(m, 128)
    if multiprocessors is None or blocks >= multiprocessors:
        return 1
    return max(1, min(triton.cdiv(2 * multiprocessors, blocks), n // 2048))


def chunk_rows(m: int, n: int, itemsize: int, workspace_mb: float) -> int:
    """Rows per workspace chunk: what `workspace_mb` holds of [rows, N], at least MIN_CHUNK (or M), a multiple of 128.

    The floor keeps the key-gradient GEMM's fp32 accumulate (N·d·8 bytes per chunk) small against its 2·rows·N·d
    FLOPs; at N = 256k that means a 512 MiB bf16 workspace whatever `workspace_mb` says."""
    rows = int(workspace_mb * 2**20) // max(1, n * itemsize)
    return min(m, max(MIN_CHUNK, rows // 128 * 128))


@dataclass(frozen=True)
class TritonOps:
    """The Triton backend: fixed `blocks` (else autotuned) and the backward workspace's budget."""

    blocks: tuple[int, int, int] | None = None
    workspace_mb: float = 32
    splits: int | None = None

    def lse(self, q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, pos: Tensor, margin: float | None) -> Tensor:
        """Per-row log-sum-exp of the kept logits, [M] fp32: the key splits' partial max/sum, merged."""
        (m, d), n = q.shape, k.shape[0]
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else None
        splits = self.splits or lse_splits(m, n, sms)
        align = 16 if INTERPRET else 256  # whole tiles per split; the interpreter tests split 45 keys
        per_split = triton.cdiv(triton.cdiv(n, splits), align) * align
        splits = triton.cdiv(n, per_split)
        part_max = torch.empty(splits, m, dtype=torch.float32, device=q.device)
        part_sum = torch.empty(splits, m, dtype=torch.float32, device=q.device)
        args = (q, k, labels, pos, scale, part_max, part_sum, m, n, d, q.stride(0), k.stride(0),
                0.0 if margin is None else margin)
        _launch(_lse_kernel, lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), splits), args, m, n, margin, q.dtype,
                self.blocks, KEYS_PER_SPLIT=per_split)
        if splits == 1:  # nothing to merge: three small kernels fewer per call
            return (part_max[0] + torch.log2(part_sum[0])) * math.log(2.0)
        top = part_max.amax(0)
        top = torch.where(top > float("-inf"), top, 0.0)
        total = (part_sum * torch.exp2(part_max - top)).sum(0)
        return (top + torch.log2(total)) * math.log(2.0)

    def chunk_rows(self, m: int, n: int, dtype: torch.dtype) -> int:
        """Rows per backward chunk (`chunk_rows`)."""
        return chunk_rows(m, n, dtype.itemsize, self.workspace_mb)

    def probs(self, q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, pos: Tensor, margin: float | None,
              lse_: Tensor, g: Tensor) -> Tensor:
        """g_i·p_ij of the rows q (one chunk, a row slice) against all keys, [rows, N] in the input dtype."""
        (m, d), n = q.shape, k.shape[0]
        out = torch.empty(m, n, dtype=q.dtype, device=q.device)
        args = (q, k, labels, pos, scale, lse_, g, out, m, n, d, q.stride(0), k.stride(0), out.stride(0),
                0.0 if margin is None else margin)
        _launch(_probs_kernel, lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])),
                args, m, n, margin, q.dtype, self.blocks)
        return out
