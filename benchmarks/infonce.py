"""Benchmark InfoNCE implementations side by side: forward+backward time, extra memory, achieved TFLOP/s.

Implementations: eager PyTorch (the materialised formula `backend="eager"` runs: matmul in the input dtype, fp32
logits, cross_entropy), torch.compile of it (dynamic shapes: one compile for all sizes), the chunked torch path, the
`inf-cl` package (`inf_cl.cal_inf_loss`, single-process flash path, head_dim 256 or the largest power of two
dividing d; it up-casts q and k to fp32, see INF_CL_PRECISION) when importable, ours (`infonce_triton`, the fused
path, default workspace) and `backend="auto"` (each row records the path it took). Useful FLOPs are 6·M·N·d per forward+backward (scores, dQ, dK); the --dtype matmul rate of the same
M×d by d×N product is measured in the same run as the yardstick, and the device's ceilings (an 8192³ matmul, a
1 GiB device copy) once per run. "gathered" rows simulate one rank of --world ranks: M = N / world local rows
against N gathered keys, labels offset to the middle rank's block. Slow cases get fewer timed repeats (--budget
seconds each; the JSON says how many), and an implementation whose step, scaled by M·N from its last measured
size, would exceed --give-up seconds is not run at that size. The JSON is rewritten after every row, so a run cut
short keeps what it measured.

GPU:  python benchmarks/infonce.py            (writes benchmarks/results/<gpu-name>/infonce.json)
      python benchmarks/infonce.py --cases 2048x2048,2048x16384,16384x16384  (M×N cases instead of --sizes/--modes)
CPU smoke run:  python benchmarks/infonce.py --device cpu --dtype fp32 --sizes 256,512 --dims 64 --out /tmp/x.json
      (with TRITON_INTERPRET=1 set, "ours" runs in Triton's interpreter)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from result_file import host_kind, write_result

from mimo_ds.kernels import infonce_chunked, infonce_loss, infonce_triton
from mimo_ds.kernels.infonce import auto_choice

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SCALE = 20.0
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
INF_CL_PRECISION = ("inf-cl 1.2.1's flash path casts q and k to fp32 before its Triton kernels (TF32 tensor-core "
                    "matmuls, twice the bytes of bf16): not the same arithmetic as the bf16 rows of the others")
IMPLS = ("eager", "compile", "chunked", "inf-cl", "ours", "auto")


def _eager(q, k, labels):
    return infonce_loss(q, k, scale=SCALE, labels=labels, backend="eager")


def _auto(q, k, labels):
    return infonce_loss(q, k, scale=SCALE, labels=labels, backend="auto")


def _inf_cl():
    try:
        from inf_cl import cal_inf_loss
    except ImportError as err:
        return None, f"inf-cl not importable ({err})"

    def loss(q, k, labels):
        head_dim = next(h for h in (256, 128, 64, 32, 16) if q.shape[1] % h == 0)
        return cal_inf_loss(q, k, labels=labels, scale=SCALE, head_dim=head_dim)

    return loss, None


def _ours(q, k, labels):
    return infonce_triton(q, k, scale=SCALE, labels=labels)


def _compiled(q, k, labels):
    return infonce_loss(q, k, scale=SCALE, labels=labels, backend="compile")


def implementations(device: str, compile_: bool, wanted: tuple[str, ...] = IMPLS
                    ) -> dict[str, tuple[Callable | None, str | None]]:
    """name -> (loss(q, k, labels) or None, reason it is skipped)."""
    impls: dict[str, tuple[Callable | None, str | None]] = {"eager": (_eager, None)}
    impls["compile"] = (_compiled, None) if compile_ else (None, "--no-compile")
    impls["chunked"] = ((lambda q, k, labels: infonce_chunked(q, k, scale=SCALE, labels=labels, chunk=4096)), None)
    impls["inf-cl"] = _inf_cl() if device == "cuda" else (None, "needs CUDA")
    impls["ours"] = (_ours, None) if device == "cuda" or INTERPRET else (None, "needs CUDA or TRITON_INTERPRET=1")
    impls["auto"] = (_auto, None)
    return {name: impl for name, impl in impls.items() if name in wanted}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_tflops(m: int, n: int, d: int, dtype: torch.dtype, device: str, warmup: int, repeats: int) -> float:
    """Achieved rate of one M×d by d×N matmul (2·M·N·d FLOPs), the yardstick for the loss kernels."""
    a = torch.randn(m, d, device=device, dtype=dtype)
    b = torch.randn(n, d, device=device, dtype=dtype)
    seconds = _median_time(lambda: a @ b.T, device, warmup, repeats)
    return 2 * m * n * d / seconds / 1e12


def ceilings(dtype: torch.dtype, device: str) -> dict:
    """The device's own yardsticks, on random data: an 8192³ matmul's TFLOP/s and a 1 GiB copy's TB/s (bytes read
    plus written)."""
    rate = matmul_tflops(8192, 8192, 8192, dtype, device, 3, 10)
    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    seconds = _median_time(lambda: dst.copy_(src), device, 3, 10)
    return {"matmul_8192_tflops": rate, "copy_tbps": 2 * src.numel() * 4 / seconds / 1e12}


def measure(loss_fn: Callable, m: int, n: int, d: int, offset: int, dtype: torch.dtype, device: str,
            warmup: int, repeats: int, budget: float) -> dict:
    """Median forward+backward seconds, peak memory above the inputs (CUDA only), achieved TFLOP/s; a case whose
    step takes longer than `budget` / (warmup + repeats) seconds gets fewer repeats and no extra warm-up."""
    q = F.normalize(torch.randn(m, d, device=device), dim=1).to(dtype).requires_grad_()
    k = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype).requires_grad_()
    labels = torch.arange(m, device=device) + offset

    def step():
        q.grad = k.grad = None
        loss_fn(q, k, labels).backward()

    step()  # compile / autotune outside the measurement
    extra = None
    q.grad = k.grad = None
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    started = time.perf_counter()
    step()
    _sync(device)
    once = time.perf_counter() - started
    if device == "cuda":
        extra = torch.cuda.max_memory_allocated() - base
    if once * (warmup + repeats) > budget:
        warmup, repeats = 0, max(1, int(budget / once))
    seconds = _median_time(step, device, warmup, repeats)
    return {"seconds": seconds, "extra_bytes": extra, "tflops": 6 * m * n * d / seconds / 1e12, "repeats": repeats}


def _cases(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """(M, N, mode) in order: --cases as given, else every --sizes × --modes."""
    if args.cases:
        return [(m, n, "local" if m == n else "gathered") for m, n in args.cases]
    return [(n if mode == "local" else n // args.world, n, mode) for n in args.sizes for mode in args.modes]


def run(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """Every (d, N, mode, implementation) row; `save` gets the report after each row."""
    dtype = DTYPES[args.dtype]
    impls = implementations(args.device, not args.no_compile, tuple(args.impls))
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "useful_flops": "6*M*N*d per forward+backward",
              "notes": {"inf-cl": INF_CL_PRECISION, "eager": "kernels/auto.py `materialised`: scores in the input "
                        "dtype, logits fp32 (backend='eager')", "auto": "row['auto_path'] is what backend='auto' "
                        "chose (kernels/crossovers.json, half the free memory as the budget)",
                        "interpreter": INTERPRET},
              "ceilings": ceilings(dtype, args.device) if args.device == "cuda" else None, "results": []}
    save(report)
    last: dict[tuple[str, str, int], tuple[float, int]] = {}  # (impl, mode, d) -> (seconds, M·N) last measured
    for d in args.dims:
        for m, n, mode in _cases(args):
            offset = 0 if m == n else n // m // 2 * m  # the middle rank's block
            try:
                rate = matmul_tflops(m, n, d, dtype, args.device, args.warmup, args.repeats)
            except torch.OutOfMemoryError:
                rate = None
            for name, (fn, reason) in impls.items():
                row = {"impl": name, "mode": mode, "M": m, "N": n, "d": d, "dtype": args.dtype,
                       "matmul_tflops": rate}
                if name == "auto":
                    probe = torch.empty(m, d, dtype=dtype, device=args.device)
                    row["auto_path"], row["auto_why"] = auto_choice(probe, torch.empty(n, d, dtype=dtype,
                                                                                       device=args.device))
                    del probe
                seen = last.get((name, mode, d))
                predicted = seen[0] * m * n / seen[1] if seen else 0.0
                if fn is None:
                    row["skipped"] = reason
                elif predicted > args.give_up:
                    row["skipped"] = f"predicted {predicted:.2g} s per step > --give-up {args.give_up:g} s"
                else:
                    try:
                        row.update(measure(fn, m, n, d, offset, dtype, args.device, args.warmup,
                                           args.repeats, args.budget))
                    except torch.OutOfMemoryError:
                        row["skipped"] = "out of memory"
                    except RuntimeError as err:  # keep the other rows
                        row["skipped"] = f"failed: {str(err).splitlines()[0][:160]}"
                    if "seconds" in row:
                        last[(name, mode, d)] = (row["seconds"], m * n)
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
                report["results"].append(row)
                save(report)
    return report


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"InfoNCE forward+backward on {host_kind()}, {report['config']['dtype']}")
    for col in ["impl", "mode", "M", "N", "d", "ms", "extra MiB", "TFLOP/s", "% matmul", "note"]:
        table.add_column(col, justify="left" if col in ("impl", "mode", "note") else "right")
    for r in report["results"]:
        done = "seconds" in r
        mib = f"{r['extra_bytes'] / 2**20:.0f}" if done and r["extra_bytes"] is not None else "-"
        pct = f"{100 * r['tflops'] / r['matmul_tflops']:.0f}" if done and r["matmul_tflops"] else "-"
        table.add_row(r["impl"], r["mode"], str(r["M"]), str(r["N"]), str(r["d"]),
                      f"{1e3 * r['seconds']:.2f}" if done else "-", mib,
                      f"{r['tflops']:.3g}" if done else "-", pct,
                      r.get("skipped") or (f"auto: {r['auto_path']}" if "auto_path" in r else ""))
    Console(width=150).print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[4096, 16384, 65536, 262144], help="N (= M for local)")
    parser.add_argument("--dims", type=ints, default=[384, 1024])
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=["local", "gathered"])
    parser.add_argument("--world", type=int, default=8, help="simulated ranks for the gathered mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed steps per case, at most")
    parser.add_argument("--give-up", type=float, default=8.0,
                        help="skip a case whose step is predicted (from the last size, by M·N) to take longer")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--impls", type=lambda t: t.split(","), default=list(IMPLS), help=",".join(IMPLS))
    parser.add_argument("--cases", type=lambda t: [tuple(int(x) for x in c.split("x")) for c in t.split(",")],
                        help="MxN cases (M < N: local rows against gathered keys, the middle block's labels), "
                             "instead of --sizes × --modes")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: benchmarks/results/<gpu-name>/infonce.json on CUDA, "
                             "the temp directory otherwise)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out  # only GPU runs land in the committed results tree
    if out is None and args.device != "cuda":
        out = Path(tempfile.gettempdir()) / host_kind() / "infonce.json"
    report = run(args, lambda partial: write_result("infonce", partial, out, quiet=True))
    print_table(report)
    write_result("infonce", report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
