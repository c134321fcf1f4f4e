"""The loss terms the objectives are composed of: embedding distillation, (cross-lingual) InfoNCE, LaKDA's KL.

Every similarity is a cosine, as in MIMO: the contrastive terms L2-normalise first. InfoNCE goes through
`mimo_ds.kernels.infonce_loss` (the fused Triton kernel on CUDA, the chunked PyTorch path elsewhere), so the B×B
score matrix is never materialised; with `negatives="global"` the keys of every rank are gathered (autograd-aware)
while the rows stay local (`mimo_ds.distributed.gather_keys` states the gradient convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimo_ds.distributed import gather_keys
from mimo_ds.kernels import infonce_loss


def distill_loss(projected: torch.Tensor, target: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Mean over rows of a distance between P·s(x) and the teacher's t(e).

    `cosine` (MIMO's): 1 − cos(P s(x), t(e)); `mse`: mean squared error over all coordinates (Reimers & Gurevych
    2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"); `l2`: Euclidean norm.
    """
    if projected.shape != target.shape:
        raise ValueError(f"projected {tuple(projected.shape)} and teacher {tuple(target.shape)} shapes differ")
    target = target.to(projected.dtype)
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(projected, target, dim=-1)).mean()
    if distance == "mse":
        return F.mse_loss(projected, target)
    if distance == "l2":
        return (projected - target).norm(dim=-1).mean()
    raise ValueError(f"unknown distance '{distance}' (expected cosine, mse or l2)")


def info_nce(queries: torch.Tensor, keys: torch.Tensor, scale: float, negatives: str = "local") -> torch.Tensor:
    """Query→key InfoNCE with in-batch negatives (van den Oord et al. 2018; sentence-transformers'
    MultipleNegativesRankingLoss): −mean_i log softmax_j(scale·cos(q_i, k_j))[i]; row i's positive is key i of this
    rank, the other keys (of this rank, or of all ranks) are its negatives."""
    q = F.normalize(queries, dim=-1)
    k = F.normalize(keys, dim=-1)
    offset = 0
    if negatives == "global":
        k, offset = gather_keys(k)
    return infonce_loss(q, k, scale=scale, label_offset=offset)


def language_kl(query_a: torch.Tensor, query_b: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """LaKDA's KL(p_b ‖ p_a) over in-batch documents, p = softmax of the UNscaled cosine (Yang et al. 2024, "Language
    Bias in Multilingual Information Retrieval", MRL workshop), reduced as `KLDivLoss(reduction="batchmean")`.

    No stop-gradient: both language views of the query receive gradient, as in MIMO's reference implementation.
    """
    d = F.normalize(docs, dim=-1)
    log_p_a = F.log_softmax(F.normalize(query_a, dim=-1) @ d.T, dim=-1)
    log_p_b = F.log_softmax(F.normalize(query_b, dim=-1) @ d.T, dim=-1)
    return F.kl_div(log_p_a, log_p_b, reduction="batchmean", log_target=True)
