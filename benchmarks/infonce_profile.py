"""Where the time of our InfoNCE forward+backward goes, kernel by kernel (torch.profiler, CUDA time).

    python benchmarks/infonce_profile.py [--shapes 8192x65536,65536x65536] [--d 1024] [--out PATH]

For each M×N shape: one warm-up step (autotuning), then one profiled step; writes the CUDA time of every kernel
(the LSE kernel, the probability kernel, the cuBLAS GEMMs, the elementwise glue) as JSON, to read the kernel's
distance from the matmul rate off its parts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from result_file import write_result
from torch.profiler import ProfilerActivity, profile

from mimo_ds.kernels import infonce_triton


def one(m: int, n: int, d: int) -> dict:
    q = F.normalize(torch.randn(m, d, device="cuda"), dim=1).bfloat16().requires_grad_()
    k = F.normalize(torch.randn(n, d, device="cuda"), dim=1).bfloat16().requires_grad_()
    labels = torch.arange(m, device="cuda") + (n - m) // 2

    def step():
        q.grad = k.grad = None
        infonce_triton(q, k, labels=labels).backward()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = sorted(((e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()
                      if e.device_time_total > 0), key=lambda x: -x[1])
    total = sum(ms for _, ms, _ in kernels)
    return {"M": m, "N": n, "d": d, "useful_flops": 6 * m * n * d, "cuda_ms_total": total,
            "kernels": [{"name": name[:160], "ms": ms, "calls": calls, "share": ms / total}
                        for name, ms, calls in kernels]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8192x65536,65536x65536")
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = [one(*map(int, shape.split("x")), args.d) for shape in args.shapes.split(",")]
    for run in runs:
        print(f"M={run['M']} N={run['N']} d={run['d']}: {run['cuda_ms_total']:.2f} ms of CUDA time")
        for kern in run["kernels"][:8]:
            print(f"  {kern['ms']:9.3f} ms {100 * kern['share']:5.1f}% x{kern['calls']:<4d} {kern['name'][:90]}")
    write_result("infonce_profile", {"runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
