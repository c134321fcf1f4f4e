"""docs/kernel.md's GPU tables, generated from the committed result files (never copied by hand).

Reads `benchmarks/results/<gpu>/infonce.json` (the kept kernel), `infonce_backward_attempts.json` (the first run,
with the fused backward that was dropped) and `infonce_profile.json` (our step, kernel by kernel) and rewrites the
block between the markers in docs/kernel.md:

    python benchmarks/kernel_tables.py [--gpu nvidia-h100-80gb-hbm3] [--check]

--check exits 1 when the document is not what the result files give (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "kernel.md"
START, END = "<!-- gpu-tables:start (benchmarks/kernel_tables.py) -->", "<!-- gpu-tables:end -->"
IMPLS = ["eager", "compile", "chunked", "inf-cl", "ours"]


def _ms(row: dict | None) -> str:
    return f"{row['seconds'] * 1e3:.2f}" if row and "seconds" in row else "–"


def _mib(row: dict | None) -> str:
    return f"{row['extra_bytes'] / 2**20:.0f}" if row and row.get("extra_bytes") is not None else "–"


def _index(report: dict) -> dict[tuple, dict]:
    return {(r["impl"], r["mode"], r["N"], r["d"]): r for r in report["results"]}


def _header(report: dict) -> str:
    host, gpu, ceil = report["host"], report["host"]["gpu"], report["ceilings"]
    return (f"{gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda']}), torch {host['torch']}, Triton "
            f"{gpu['triton']}, {report['config']['dtype']}, {report['time'][:10]}. Ceilings measured in the same "
            f"run: 8192³ matmul {ceil['matmul_8192_tflops']:.0f} TFLOP/s, device copy {ceil['copy_tbps']:.2f} TB/s.")


def main_table(report: dict, d: int) -> list[str]:
    """Time (ms) and peak extra memory (MiB) of every implementation at one d, and ours against the matmul rate."""
    rows = _index(report)
    sizes = sorted({r["N"] for r in report["results"] if r["d"] == d})
    head = "| mode | M | N | " + " | ".join(f"{i} ms" for i in IMPLS) + " | " + \
        " | ".join(f"{i} MiB" for i in IMPLS) + " | ours TFLOP/s | % of matmul |"
    lines = [head, "|" + "---|" * (3 + 2 * len(IMPLS) + 2)]
    for n in sizes:
        for mode in ("local", "gathered"):
            got = {i: rows.get((i, mode, n, d)) for i in IMPLS}
            ours = got["ours"]
            if ours is None:
                continue
            rate = ours.get("matmul_tflops")
            basis = "" if rate else "†"
            rate = rate or report["ceilings"]["matmul_8192_tflops"]
            tflops = f"{ours['tflops']:.0f}" if "seconds" in ours else "–"
            pct = f"{100 * ours['tflops'] / rate:.0f}{basis}" if "seconds" in ours else "–"
            lines.append(f"| {mode} | {ours['M']} | {n} | " + " | ".join(_ms(got[i]) for i in IMPLS) + " | "
                         + " | ".join(_mib(got[i]) for i in IMPLS) + f" | {tflops} | {pct} |")
    return lines


def goals(report: dict) -> list[str]:
    """The design goals (docs/design.md), each with the measured numbers that decide it."""
    rows = _index(report)
    lines = ["| goal | measured | met |", "|---|---|---|"]
    ours, eager = rows[("ours", "local", 16384, 1024)], rows[("eager", "local", 16384, 1024)]
    share = ours["extra_bytes"] / eager["extra_bytes"]
    lines.append(f"| B = 16k, d = 1024: no slower than eager | {_ms(ours)} ms vs {_ms(eager)} ms | "
                 f"{'yes' if ours['seconds'] <= eager['seconds'] else 'no'} |")
    lines.append(f"| B = 16k, d = 1024: ≤ 5% of eager's extra memory | {_mib(ours)} MiB vs {_mib(eager)} MiB "
                 f"= {100 * share:.1f}% | {'yes' if share <= 0.05 else 'no'} |")
    for (impl, mode, n, d), row in sorted(rows.items(), key=lambda kv: (kv[0][3], kv[0][2], kv[0][1])):
        if impl != "ours" or n < 65536 or "seconds" not in row:
            continue
        peer = rows.get(("inf-cl", mode, n, d))
        if peer and "seconds" in peer:
            speedup = peer["seconds"] / row["seconds"]
            lines.append(f"| B = {n // 1024}k {mode}, d = {d}: faster than inf-cl | {speedup:.1f}× "
                         f"({_ms(row)} vs {_ms(peer)} ms) | {'yes' if speedup > 1 else 'no'} |")
        rate = row.get("matmul_tflops") or report["ceilings"]["matmul_8192_tflops"]
        share = row["tflops"] / rate
        lines.append(f"| B = {n // 1024}k {mode}, d = {d}: ≥ 50% of the matmul rate | {100 * share:.0f}% "
                     f"({row['tflops']:.0f} of {rate:.0f} TFLOP/s) | {'yes' if share >= 0.5 else 'no'} |")
    return lines


def attempts(report: dict) -> list[str]:
    """The first run: the workspace backward (64 MiB) against the fused two-sweep backward, d = 1024."""
    rows = _index(report)
    lines = ["| mode | M | N | workspace ms | fused ms | fused / workspace | workspace MiB | fused MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for (impl, mode, n, d), row in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        fused = rows.get(("ours-fused", mode, n, d))
        if impl != "ours" or not fused or "seconds" not in fused:
            continue
        lines.append(f"| {mode} | {row['M']} | {n} | {_ms(row)} | {_ms(fused)} | "
                     f"{fused['seconds'] / row['seconds']:.1f}× | {_mib(row)} | {_mib(fused)} |")
    return lines


PARTS = (("_lse_kernel", "LSE (Triton, forward)"), ("_probs_kernel", "P tiles (Triton)"),
         ("badd", "dK += Pᵀ·Q (cuBLAS, fp32 accumulate)"))


def _part(name: str) -> str:
    for key, label in PARTS:
        if key in name:
            return label
    return "dQ = P·K (cuBLAS)" if "gemm" in name.lower() or "nvjet" in name else "elementwise glue"


def profile(report: dict) -> list[str]:
    """Each run's CUDA time by part; the four 2·M·N·d parts with their rate against the 8192³ matmul's."""
    lines = ["| M | N | d | part | calls | ms | share | TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        parts: dict[str, list[float]] = {}
        for kern in run["kernels"]:
            got = parts.setdefault(_part(kern["name"]), [0.0, 0])
            got[0] += kern["ms"]
            got[1] += kern["calls"]
        flops = 2 * run["M"] * run["N"] * run["d"]
        for label, (ms, calls) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
            rate = f"{flops / ms / 1e9:.0f}" if label != "elementwise glue" else "–"
            lines.append(f"| {run['M']} | {run['N']} | {run['d']} | {label} | {calls} | {ms:.2f} | "
                         f"{100 * ms / run['cuda_ms_total']:.0f}% | {rate} |")
        useful = 6 * run["M"] * run["N"] * run["d"] / run["cuda_ms_total"] / 1e9
        lines.append(f"| {run['M']} | {run['N']} | {run['d']} | **all** | | {run['cuda_ms_total']:.2f} | 100% | "
                     f"{useful:.0f} useful |")
    return lines


def render(gpu: str) -> str:
    folder = ROOT / "benchmarks" / "results" / gpu
    report = json.loads((folder / "infonce.json").read_text())
    first = json.loads((folder / "infonce_backward_attempts.json").read_text())
    prof = json.loads((folder / "infonce_profile.json").read_text())
    parts = [START, "", _header(report), ""]
    for d in sorted({r["d"] for r in report["results"]}, reverse=True):
        parts += [f"**d = {d}** (ms: median forward+backward; MiB: peak memory above the inputs, gradients "
                  "included; † no room for the same-shape matmul, so the 8192³ rate)", "",
                  *main_table(report, d), ""]
    parts += ["**Goals**", "", *goals(report), "",
              f"**Attempts** (first run, {first['time'][:10]}, same machine kind: the kept workspace backward, then "
              "with a 64 MiB budget, against the fused two-sweep backward that was removed)", "",
              *attempts(first), "",
              f"**Profile** (`benchmarks/infonce_profile.py`, {prof['time'][:10]}: one forward+backward under "
              "torch.profiler, CUDA time by kernel; rates count 2·M·N·d per part)", "",
              *profile(prof), "", END]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="nvidia-h100-80gb-hbm3")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} … {END} block")
    new = text[: text.index(START)] + render(args.gpu) + text[text.index(END) + len(END):]
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python benchmarks/kernel_tables.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
