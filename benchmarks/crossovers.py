"""kernels/crossovers.json, the table `infonce_loss(backend="auto")` chooses from, written from a result file of
benchmarks/infonce.py: for one device, every measured (M, N, d) point with the forward+backward times of eager,
compile and ours (the fused path), and the largest extra bytes per score eager and compile took.

    python benchmarks/crossovers.py benchmarks/results/<gpu>/infonce.json [--table kernels/crossovers.json] [--check]

Other devices' entries are kept. --check exits 1 when the table is not what the result file gives (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "kernels" / "crossovers.json"
PATHS = {"eager": "eager", "compile": "compile", "fused": "ours"}  # table path -> benchmark impl


def entry(report: dict, source: str) -> dict:
    """The table entry of one benchmark report (its rows of one dtype, the first the report has)."""
    rows = [r for r in report["results"] if "seconds" in r]
    dtype = rows[0]["dtype"]
    by_point: dict[tuple[int, int, int], dict] = {}
    for r in rows:
        if r["dtype"] != dtype:
            continue
        for path, impl in PATHS.items():
            if r["impl"] == impl:
                by_point.setdefault((r["M"], r["N"], r["d"]), {})[f"{path}_ms"] = round(r["seconds"] * 1e3, 4)
    points = [{"M": m, "N": n, "d": d, **ms} for (m, n, d), ms in sorted(by_point.items(), key=lambda kv: (
        kv[0][2], kv[0][0] * kv[0][1], kv[0][0]))]
    per_score = {}
    for path in ("eager", "compile"):
        seen = [r["extra_bytes"] / (r["M"] * r["N"]) for r in rows if r["impl"] == path and r.get("extra_bytes")
                and r["dtype"] == dtype]
        per_score[path] = round(max(seen), 3) if seen else float("inf")
    source_rec = report["host"].get("source") or {}
    return {"source": f"{source} ({report['time'][:10]}, commit {source_rec.get('commit') or 'not recorded'})",
            "dtype": dtype, "bytes_per_score": per_score, "points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    report = json.loads(args.result.read_text())
    device = report["host"]["gpu"]["name"]
    old = json.loads(args.table.read_text()) if args.table.is_file() else {}
    devices = {**old.get("devices", {})}
    rel = args.result.resolve().relative_to(ROOT) if args.result.resolve().is_relative_to(ROOT) else args.result
    devices[device] = entry(report, str(rel))
    new = {"written_by": "benchmarks/crossovers.py", "read_by": "kernels/auto.py",
           "devices": dict(sorted(devices.items()))}
    text = json.dumps(new, indent=1) + "\n"
    if args.check:
        if not args.table.is_file() or args.table.read_text() != text:
            print(f"{args.table} is out of date: run python benchmarks/crossovers.py {args.result}", file=sys.stderr)
            return 1
        return 0
    args.table.write_text(text)
    print(f"wrote {args.table}: {device}, {len(devices[device]['points'])} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
