"""docs/kernel.md's GPU tables, generated from the committed result files (never copied by hand).

Reads, for every GPU folder, `benchmarks/results/<gpu>/infonce.json` (the kernel against its peers), any
`infonce_*recheck*.json` re-runs and, where present, `infonce_backward_attempts.json` (the first run, with the fused
backward that was dropped) and `infonce_profile.json` (our step, kernel by kernel), and rewrites the block between
the markers in docs/kernel.md:

    python benchmarks/kernel_tables.py [--check]

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
IMPLS = ["eager", "compile", "chunked", "inf-cl", "ours", "auto"]


def _ms(row: dict | None) -> str:
    return f"{row['seconds'] * 1e3:.2f}" if row and "seconds" in row else "–"


def _mib(row: dict | None) -> str:
    return f"{row['extra_bytes'] / 2**20:.0f}" if row and row.get("extra_bytes") is not None else "–"


def _index(report: dict) -> dict[tuple, dict]:
    return {(r["impl"], r["mode"], r["N"], r["d"]): r for r in report["results"]}


def _header(report: dict) -> str:
    host, gpu, ceil = report["host"], report["host"]["gpu"], report["ceilings"]
    commit = (host.get("source") or {}).get("commit")
    return (f"{gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda']}), torch {host['torch']}, Triton "
            f"{gpu['triton']}, {report['config']['dtype']}, {report['time'][:10]}, "
            f"{'commit ' + commit[:12] if commit else 'commit not recorded'}. Ceilings measured in the same "
            f"run: 8192³ matmul {ceil['matmul_8192_tflops']:.0f} TFLOP/s (the yardstick below), device copy "
            f"{ceil['copy_tbps']:.2f} TB/s.")


def _impls(report: dict) -> list[str]:
    present = {r["impl"] for r in report["results"]}
    return [i for i in IMPLS if i in present]


def main_table(report: dict, d: int) -> list[str]:
    """Time (ms) and peak extra memory (MiB) of every implementation at one d, and ours against the 8192³ peak."""
    rows, impls = _index(report), _impls(report)
    peak = report["ceilings"]["matmul_8192_tflops"]
    sizes = sorted({r["N"] for r in report["results"] if r["d"] == d})
    head = "| mode | M | N | " + " | ".join(f"{i} ms" for i in impls) + " | " + \
        " | ".join(f"{i} MiB" for i in impls) + " | ours TFLOP/s | % of 8192³ peak |"
    lines = [head, "|" + "---|" * (3 + 2 * len(impls) + 2)]
    for n in sizes:
        for mode in ("local", "gathered"):
            got = {i: rows.get((i, mode, n, d)) for i in impls}
            ours = got["ours"]
            if ours is None:
                continue
            tflops = f"{ours['tflops']:.0f}" if "seconds" in ours else "–"
            pct = f"{100 * ours['tflops'] / peak:.0f}" if "seconds" in ours else "–"
            lines.append(f"| {mode} | {ours['M']} | {n} | " + " | ".join(_ms(got[i]) for i in impls) + " | "
                         + " | ".join(_mib(got[i]) for i in impls) + f" | {tflops} | {pct} |")
    return lines


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def goals(report: dict) -> list[str]:
    """The kernel goals of the project's DESIGN, each judged from the measured numbers of this one run."""
    rows = _index(report)
    peak = report["ceilings"]["matmul_8192_tflops"]
    keys = sorted({(d, n, mode) for (_, mode, n, d) in rows}, key=lambda k: (-k[0], k[1], k[2] != "local"))
    timed = lambda impl, key: (r := rows.get((impl, key[2], key[1], key[0]))) and "seconds" in r and r  # noqa: E731
    size = lambda key, r: f"{r['M']}×{key[1]}, d = {key[0]}"  # noqa: E731
    lines = ["| goal | size | measured | met |", "|---|---|---|---|"]
    auto_goal = "auto ≤ 1.05× the faster of eager and compile where they fit; the only path where they do not"
    if not any(impl == "auto" for impl, *_ in rows):
        lines.append(f"| {auto_goal} | all | not timed at HEAD: this run has no `auto` rows | – |")
    for key in keys:
        auto = timed("auto", key)
        if not auto:
            continue
        base = [r for r in (timed("eager", key), timed("compile", key)) if r]
        if base:
            best = min(base, key=lambda r: r["seconds"])
            ratio = auto["seconds"] / best["seconds"]
            lines.append(f"| {auto_goal} | {size(key, auto)} | {ratio:.2f}× ({_ms(auto)} ms, {auto.get('auto_path')}, "
                         f"vs {best['impl']} {_ms(best)} ms) | {_yes(ratio <= 1.05)} |")
        else:
            lines.append(f"| {auto_goal} | {size(key, auto)} | eager and compile did not run; auto "
                         f"({auto.get('auto_path')}) {_ms(auto)} ms | yes |")
    for key in keys:
        ours = timed("ours", key)
        if key[1] < 65536 or not ours:
            continue
        comp = timed("compile", key)
        if comp:
            ratio, share = ours["seconds"] / comp["seconds"], ours["extra_bytes"] / comp["extra_bytes"]
            lines.append(f"| fused ≥ 64k: ≤ 1.1× compile's time | {size(key, ours)} | {ratio:.2f}× ({_ms(ours)} vs "
                         f"{_ms(comp)} ms) | {_yes(ratio <= 1.1)} |")
            lines.append(f"| fused ≥ 64k: ≤ 10% of compile's extra memory | {size(key, ours)} | {100 * share:.0f}% "
                         f"({_mib(ours)} vs {_mib(comp)} MiB) | {_yes(share <= 0.1)} |")
        else:
            why = (rows.get(("compile", key[2], key[1], key[0])) or {}).get("skipped", "not run")
            lines.append(f"| fused ≥ 64k: ≤ 1.1× compile's time at ≤ 10% of its memory | {size(key, ours)} | "
                         f"compile: {why}; only the fused path ran ({_ms(ours)} ms, {_mib(ours)} MiB) | – |")
        if key[1] == 262144 and key[2] == "local":
            share = ours["tflops"] / peak
            lines.append(f"| ≥ 60% of the 8192³ bf16 peak at 256k local | {size(key, ours)} | {100 * share:.0f}% "
                         f"({ours['tflops']:.0f} of {peak:.0f} TFLOP/s) | {_yes(share >= 0.6)} |")
    return lines


def recheck(report: dict) -> list[str]:
    """A re-run of some sizes (another process, another day): every implementation's time and memory."""
    lines = ["| impl | M | N | d | ms | MiB |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['impl']} | {r['M']} | {r['N']} | {r['d']} | {_ms(r) if 'seconds' in r else r.get('skipped')}"
                     f" | {_mib(r)} |")
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


def render_gpu(folder: Path) -> list[str]:
    """One GPU's section: its kernel run, goals, re-checks, and (where present) attempts and profile."""
    report = json.loads((folder / "infonce.json").read_text())
    parts = [f"### {report['host']['gpu']['name']} (`benchmarks/results/{folder.name}/`)", "", _header(report), ""]
    for d in sorted({r["d"] for r in report["results"]}, reverse=True):
        parts += [f"**d = {d}** (ms: median forward+backward; MiB: peak memory above the inputs, gradients "
                  "included; inf-cl computes in fp32 (see below); % of peak: ours against the 8192³ matmul)", "",
                  *main_table(report, d), ""]
    parts += ["**Goals** (the project's DESIGN, judged from this run)", "", *goals(report), ""]
    for path in sorted(folder.glob("infonce_*recheck*.json")):
        again = json.loads(path.read_text())
        parts += [f"**Re-check** (`{path.name}`, {again['time'][:10]}; 8192³ matmul "
                  f"{again['ceilings']['matmul_8192_tflops']:.0f} TFLOP/s in that run)", "", *recheck(again), ""]
    if (folder / "infonce_backward_attempts.json").is_file():
        first = json.loads((folder / "infonce_backward_attempts.json").read_text())
        parts += [f"**Attempts** (first run, {first['time'][:10]}, same machine kind: the kept workspace backward, "
                  "then with a 64 MiB budget, against the fused two-sweep backward that was removed)", "",
                  *attempts(first), ""]
    if (folder / "infonce_profile.json").is_file():
        prof = json.loads((folder / "infonce_profile.json").read_text())
        parts += [f"**Profile** (`benchmarks/infonce_profile.py`, {prof['time'][:10]}: one forward+backward under "
                  "torch.profiler, CUDA time by kernel; rates count 2·M·N·d per part)", "", *profile(prof), ""]
    return parts


def render() -> str:
    """Every GPU with a kernel result (`benchmarks/results/<gpu>/infonce.json`), in folder order."""
    folders = sorted(p.parent for p in (ROOT / "benchmarks" / "results").glob("*/infonce.json")
                     if not p.parent.name.startswith("cpu-"))
    parts = [START, ""]
    for folder in folders:
        parts += render_gpu(folder)
    return "\n".join(parts + [END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} … {END} block")
    new = text[: text.index(START)] + render() + text[text.index(END) + len(END):]
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
