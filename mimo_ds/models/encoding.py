"""Texts → vectors in mini-batches: the one loop the teacher, evaluation and the trainer's in-training eval share.

`forward(input_ids, attention_mask)` returns one pooled vector per row (a teacher or evaluation encoder with
`pooled_forward`, or the student, which pools itself). `encode_tokens` runs it over pre-tokenised text (the loader
tokenises in its workers), rows grouped by token count so each forward is only as wide as its own texts (for a
left-padded decoder teacher that drops leading padding, which rotary positions do not see); `encode_texts` tokenises
batch by batch, longest texts first so a batch that does not fit fails at once and padding stays short, and returns
rows in the order of `texts`. Neither normalises: callers decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mimo_ds.chunking import plan_chunks
from mimo_ds.models.pooling import PoolMode, pool

Forward = Callable[[Tensor, Tensor], Tensor]


def pooled_forward(model: torch.nn.Module, pooling: PoolMode) -> Forward:
    """A transformers encoder's last hidden states pooled over the real tokens, as float32."""

    def forward(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, pooling).float()

    return forward


def encode_tokens(forward: Forward, tokens: dict[str, Tensor], batch_size: int, device: torch.device) -> Tensor:
    """[n, d] float32 on `device` for pre-tokenised rows, in their order: at most `batch_size` rows per forward,
    grouped by length and each forward trimmed to its rows' columns (`mimo_ds.chunking`)."""
    n = tokens["input_ids"].shape[0]
    if not n:
        return torch.empty(0, 0, device=device)
    plan = plan_chunks(tokens["attention_mask"], batch_size)
    out: Tensor | None = None
    for chunk in plan.chunks:
        rows = plan.rows(chunk)
        ids = tokens["input_ids"][rows, chunk.first : chunk.last].to(device)
        mask = tokens["attention_mask"][rows, chunk.first : chunk.last].to(device)
        emb = forward(ids, mask).float()
        if out is None:
            out = emb.new_empty(n, emb.shape[1])
        out[rows.to(device)] = emb
    return out


def encode_texts(forward: Forward, tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int,
                 device: torch.device) -> Tensor:
    """[len(texts), d] float32 on the CPU, rows in the order of `texts`."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: Tensor | None = None
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        emb = encode_tokens(forward, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                            len(idx), device).cpu()
        if out is None:
            out = torch.empty(len(texts), emb.shape[1])
        out[idx] = emb
    return out if out is not None else torch.empty(0, 0)
