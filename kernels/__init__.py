"""Fused InfoNCE for large contrastive batches (installed as `mimo_ds.kernels`).

Why a top-level folder installed under the package: the kernels are a unit of their own (torch and Triton only,
relative imports inside, their own GPU tests and benchmarks), laid out beside `mimo_ds/` as the product's layout
states; installing them as `mimo_ds.kernels` (pyproject's package-dir mapping) keeps them clear of the PyPI package
named `kernels`. So the import path names a folder that is not under `mimo_ds/` in the tree, and a checkout that
was never installed (`pip install -e .`) cannot import it: `import mimo_ds` then says so in one line.

`infonce_loss` is the entry point (`backend="auto"` picks eager, torch.compile or the fused path per call from the
crossovers measured on this GPU, `auto.py`); `infonce_chunked` forces the chunked PyTorch path with an explicit chunk
size; `infonce_triton` forces the Triton kernels with explicit block sizes;
`infonce_reference` is the plain materialised formula the other two are tested against. See docs/kernel.md.
"""

from .infonce import infonce_chunked, infonce_loss, infonce_triton
from .reference import infonce_reference

__all__ = ["infonce_chunked", "infonce_loss", "infonce_reference", "infonce_triton"]
