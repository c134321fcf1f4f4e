"""Chunked PyTorch implementation of the InfoNCE primitives: the row LSE and the probabilities of a chunk of rows.

This is the CPU path and the readable twin of the Triton kernels in `triton_infonce.py`: same arguments, same
results, fp32 throughout. Rows are processed `chunk` at a time, so the largest temporary is a chunk×N fp32 score
block, never the M×N matrix. Inputs are up-cast to fp32 before the matmul because bf16 logits (scale 20 × cosine)
would be rounded to 1/8 and bias the loss.

Shared notation (also used by the Triton kernels and the backward driver in `infonce.py`):
  raw_ij = q_i·k_j (fp32);   z_ij = scale·raw_ij;   pos_i = raw_{i,label_i};
  kept_ij = not (margin is set and j != label_i and raw_ij > pos_i + margin);
  lse_i = log Σ_{j kept} exp(z_ij);   p_ij = exp(z_ij − lse_i) on kept entries, 0 elsewhere;
  `probs` returns g_i·p_ij for a chunk of rows against all keys, [rows, N].
The gradient products, the positive term and the scale are the driver's, shared by both backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_CHUNK = 1024


def _logits(q: Tensor, k32: Tensor, scale: Tensor, labels: Tensor, pos: Tensor, margin: float | None) -> Tensor:
    """Masked fp32 logits of the rows q against all keys."""
    raw = q.float() @ k32.T
    logits = raw * scale.float()
    if margin is not None:
        cols = torch.arange(k32.shape[0], device=k32.device)
        drop = (raw > pos[:, None] + margin) & (cols[None, :] != labels[:, None])
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@dataclass(frozen=True)
class ChunkedOps:
    """The torch backend: `chunk` rows at a time (peak temporary chunk×N fp32)."""

    chunk: int = DEFAULT_CHUNK

    def lse(self, q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, pos: Tensor, margin: float | None) -> Tensor:
        """Per-row log-sum-exp of the kept logits, [M] fp32."""
        k32 = k.float()
        out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
        for start in range(0, q.shape[0], self.chunk):
            rows = slice(start, start + self.chunk)
            out[rows] = torch.logsumexp(_logits(q[rows], k32, scale, labels[rows], pos[rows], margin), dim=1)
        return out

    def chunk_rows(self, m: int, n: int, dtype: torch.dtype) -> int:
        """Rows per backward chunk."""
        return self.chunk

    def probs(self, q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, pos: Tensor, margin: float | None,
              lse_: Tensor, g: Tensor) -> Tensor:
        """g_i·p_ij of the rows q (one chunk) against all keys, [rows, N] fp32."""
        return torch.exp(_logits(q, k.float(), scale, labels, pos, margin) - lse_[:, None]) * g[:, None]
