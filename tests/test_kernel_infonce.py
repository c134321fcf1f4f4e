"""Fused InfoNCE (chunked torch and Triton paths) against the plain float64 formula: loss and every gradient.

On CPU the Triton kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is
imported) with 16-wide blocks; sizes are deliberately not multiples of the block or chunk sizes. GPU-only tests
compile the real kernels (autotuned and fixed blocks) and are skipped without CUDA.
"""

from __future__ import annotations

import secrets

import pytest
import torch
import torch.nn.functional as F

from mimo_ds.kernels import chunked, infonce_chunked, infonce_loss, infonce_reference, infonce_triton
from mimo_ds.kernels import infonce as infonce_module
from mimo_ds.kernels.reference import margin_mask

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# max |got − want| ≤ TOL · max |want|: gradients are returned in the input dtype, hence the 16-bit tolerances.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
M, N, D = 37, 45, 40  # none a multiple of 16 (blocks) or 8 (chunk)
VARIANTS = {
    "plain": {},
    "symmetric": {"symmetric": True},
    "lock_keys": {"lock_keys": True},
    "label_offset": {"label_offset": N - M - 3},
    "margin": {"margin": 0.0},
    "learnable_scale": {"learnable": True},
    "labels_sum": {"explicit_labels": True, "reduction": "sum"},
    "all_none_reduction": {"symmetric": True, "margin": 0.02, "label_offset": 2, "learnable": True,
                           "reduction": "none"},
}
CUDA = torch.cuda.is_available()


def _run(fn, q0, k0, opts, device, weights):
    """Loss and gradients of `fn` at copies of (q0, k0) (and of the scale when learnable)."""
    opts = dict(opts)
    learnable = opts.pop("learnable", False)
    labels = opts.pop("labels", None)
    q = q0.detach().to(device).requires_grad_()
    k = k0.detach().to(device).requires_grad_()
    scale = torch.tensor(17.0, dtype=q.dtype if q.dtype == torch.float64 else torch.float32, device=device,
                         requires_grad=True) if learnable else 17.0
    loss = fn(q, k, scale=scale, labels=None if labels is None else labels.to(device), **opts)
    total = (loss * weights.to(device, loss.dtype)).sum() if loss.ndim else loss
    inputs = [q] + ([k] if not opts.get("lock_keys") else []) + ([scale] if learnable else [])
    grads = torch.autograd.grad(total, inputs)
    return [loss.detach().cpu().double(), *(g.detach().cpu().double() for g in grads)]


def _inputs(dtype, m=M, n=N, d=D, seed=None):
    seed = secrets.randbelow(2**31) if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(m, d, generator=g), dim=1).to(dtype)
    k = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype)
    return q, k, g, seed


def _clear_of_margin(q, k, opts, eps=1e-5) -> bool:
    """False when some negative sits within eps of the margin threshold: there the float64 reference and the fp32
    kernel may legitimately disagree on dropping it (a discontinuity, not an error), so such inputs are redrawn."""
    margin = opts.get("margin")
    if margin is None:
        return True
    raw = q.double() @ k.double().T
    rows = torch.arange(raw.shape[0])
    labels = rows + opts.get("label_offset", 0)
    pos = raw[rows, labels]
    row_gaps = (raw - pos[:, None] - margin).abs()
    row_gaps[rows, labels] = float("inf")
    col_gaps = (raw[:, labels] - pos[None, :] - margin).abs()  # key→query half: other rows against each positive
    col_gaps[rows, rows] = float("inf")
    return row_gaps.min().item() > eps and (not opts.get("symmetric") or col_gaps.min().item() > eps)


def _compare(fn, variant, dtype, device="cpu", shape=(M, N, D)):
    opts = {key: value for key, value in VARIANTS[variant].items() if key != "explicit_labels"}
    for _ in range(50):
        q, k, g, seed = _inputs(dtype, *shape)
        if _clear_of_margin(q, k, opts):
            break
    if VARIANTS[variant].get("explicit_labels"):
        opts["labels"] = torch.randint(0, shape[1], (shape[0],), generator=g)  # duplicates included
    weights = torch.rand(shape[0], generator=g) + 0.5
    want = _run(infonce_reference, q.double(), k.double(), opts, "cpu", weights)
    got = _run(fn, q, k, opts, device, weights)
    assert len(got) == len(want)
    for name, a, b in zip(["loss", "grad 1", "grad 2", "grad 3"], got, want):
        err = (a - b).abs().max().item()
        bound = TOL[dtype] * max(b.abs().max().item(), 1.0)  # scale 17 logits: fp32 rounding is ~1e-6 absolute
        assert err <= bound, f"{variant} {dtype} {name}: err {err:.3g} > {bound:.3g} (seed {seed})"


@pytest.fixture
def small_chunks(monkeypatch):
    """Workspace chunks (and positive-score chunks) of 16 rows, so the M = 37 rows of the interpreter tests run
    through three chunks (the chunked path's own tests use chunk = 8)."""
    from mimo_ds.kernels import triton_infonce

    monkeypatch.setattr(triton_infonce, "MIN_CHUNK", 16)
    monkeypatch.setattr(infonce_module, "POS_CHUNK", 16)


def _chunked_small(q, k, **kw):
    return infonce_chunked(q, k, chunk=8, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_matches_formula(variant, dtype):
    _compare(_chunked_small, variant, dtype)


@pytest.mark.parametrize("splits", [1, 3], ids=["keys-whole", "keys-split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_triton_matches_formula(variant, dtype, splits, small_chunks):
    """With 3 splits the LSE kernel runs over keys 0-15, 16-31 and 32-44 in separate programs, merged after."""
    if CUDA:
        pytest.skip("interpreter test; the GPU variant is test_triton_gpu_matches_formula")
    _compare(lambda q, k, **kw: infonce_triton(q, k, blocks=(16, 16, 16), workspace_mb=1e-6, lse_splits=splits,
                                               **kw), variant, dtype)


def test_lse_merge_of_splits_with_nothing_kept():
    """A margin that drops every negative leaves each row only its positive: the splits without it carry -inf
    maxima and zero sums into the merge, and the LSE must still be exactly scale·pos."""
    if CUDA:
        pytest.skip("interpreter test")
    from mimo_ds.kernels.triton_infonce import TritonOps

    q, k, _, _ = _inputs(torch.float32)
    labels = torch.arange(M) + 5
    pos = (q * k[labels]).sum(1)
    scale = torch.tensor(17.0)
    lse = TritonOps(blocks=(16, 16, 16), splits=3).lse(q, k, scale, labels, pos, margin=-10.0)
    torch.testing.assert_close(lse, scale * pos)


def test_lse_splits_fill_the_gpu_only_when_rows_do_not():
    from mimo_ds.kernels.triton_infonce import lse_splits

    assert lse_splits(65536, 65536, 132) == 1  # 512 row blocks
    assert lse_splits(8192, 65536, 132) == 5  # 64 row blocks → about 2 programs per multiprocessor
    assert lse_splits(100, 3000, 132) == 1  # too few keys to split
    assert lse_splits(8192, 65536, None) == 1  # interpreter


def test_workspace_chunk_rows():
    from mimo_ds.kernels.triton_infonce import MIN_CHUNK, chunk_rows

    assert chunk_rows(300, 517, 2, 64) == 300  # fewer rows than one chunk
    assert chunk_rows(2**16, 2**14, 2, 64) == 2048  # 64 MiB of bf16 [rows, 16384]
    assert chunk_rows(2**18, 2**18, 2, 64) == MIN_CHUNK  # the floor, not 128 rows
    assert chunk_rows(10**5, 3000, 4, 8) % 128 == 0


@pytest.mark.parametrize("shape", [(1, 2, 3), (5, 70, 33), (17, 50, 9)])
def test_triton_odd_shapes_and_blocks(shape, small_chunks):
    if CUDA:
        pytest.skip("interpreter test")
    _compare(lambda q, k, **kw: infonce_triton(q, k, blocks=(8, 32, 16), workspace_mb=1e-6, **kw), "margin",
             torch.float32, shape=shape)


def test_margin_variant_masks_some_but_not_all_negatives():
    q, k, _, seed = _inputs(torch.float64)
    labels = torch.arange(M)
    dropped = margin_mask(q @ k.T, labels, VARIANTS["margin"]["margin"]).sum().item()
    assert 0 < dropped < M * (N - 1), f"margin test would be vacuous: {dropped} dropped (seed {seed})"


def test_lock_keys_skips_key_gradient_work(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("key gradient computed although keys are locked")

    monkeypatch.setattr(infonce_module, "_add_key_grad", forbidden)
    q, k, _, _ = _inputs(torch.float32)
    k.requires_grad_()
    q.requires_grad_()
    infonce_loss(q, k, lock_keys=True, backend="torch").backward()
    assert k.grad is None and q.grad is not None


def test_auto_backend_on_cpu_takes_the_chunked_path_and_is_right():
    """On CPU tensors "auto" dispatches to the chunked PyTorch path (even with TRITON_INTERPRET set: the interpreter
    is for tests), and its value is the plain materialised formula's."""
    from mimo_ds.kernels.infonce import _select_ops

    q, k, _, _ = _inputs(torch.float32)
    assert isinstance(_select_ops("auto", q), chunked.ChunkedOps)
    torch.testing.assert_close(infonce_loss(q, k, backend="auto"), infonce_reference(q, k))


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "reduction"),
    ({"backend": "cuda"}, "backend"),
    ({"label_offset": N}, "label_offset|offset"),
    ({"labels": torch.zeros(3, dtype=torch.long)}, "labels"),
    ({"scale": torch.ones(2)}, "scale"),
])
def test_bad_arguments_are_named(kwargs, message):
    q, k, _, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match=message):
        infonce_loss(q, k, **kwargs)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="same d"):
        infonce_loss(torch.randn(3, 4), torch.randn(5, 6))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("blocks", [None, (16, 16, 16), (64, 128, 64)], ids=["autotuned", "16", "64x128x64"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_triton_gpu_matches_formula(variant, dtype, blocks):
    _compare(lambda q, k, **kw: infonce_triton(q, k, blocks=blocks, **kw), variant, dtype, device="cuda",
             shape=(300, 517, 1000))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("splits", [None, 3], ids=["keys-auto", "keys-split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["plain", "all_none_reduction"])
def test_triton_gpu_workspace_in_several_chunks(variant, dtype, splits):
    """2500 rows in workspace chunks of 1024, 1024 and 452 (the autotuner meets two chunk heights); with 3 splits
    the LSE kernel runs the 3001 keys in parts of 1024, 1024 and 953."""
    _compare(lambda q, k, **kw: infonce_triton(q, k, workspace_mb=1e-6, lse_splits=splits, **kw), variant, dtype,
             device="cuda", shape=(2500, 3001, 384))
