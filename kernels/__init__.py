"""Fused InfoNCE for large contrastive batches (installed as `mimo_ds.kernels`).

`infonce_loss` is the entry point (`backend="auto"` picks eager, torch.compile or the fused path per call from the
crossovers measured on this GPU, `auto.py`); `infonce_chunked` forces the chunked PyTorch path with an explicit chunk
size; `infonce_triton` forces the Triton kernels with explicit block sizes;
`infonce_reference` is the plain materialised formula the other two are tested against. See docs/kernel.md.
"""

from .infonce import infonce_chunked, infonce_loss, infonce_triton
from .reference import infonce_reference

__all__ = ["infonce_chunked", "infonce_loss", "infonce_reference", "infonce_triton"]
