"""`mimo-ds shards verify` throughput: MB/s of shard bytes checked, per mode and process count.

Builds a synthetic stage-2 shard folder (the data-loader benchmark's 14-language rows), then times `verify_folder` in
`full` mode (size + sha256) and `records` mode (+ decode and validate every record) at each process count. The shards
were just written, so they are read from the page cache: this is the CPU side of verifying, the ceiling a fast disk
can reach; a cold read of a network filesystem is slower. Prints a table and writes JSON with the host's details.

    python benchmarks/verify.py [--rows 8000] [--shard-size 250] [--workers 1 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dataloader import synthetic_rows
from result_file import write_result


def measure(folder: Path, mode: str, workers: int) -> dict:
    from mimo_ds.data.verify import verify_folder

    start = time.perf_counter()
    _, reports = verify_folder(folder, mode, workers)
    seconds = time.perf_counter() - start
    size = sum(r.size or 0 for r in reports)
    assert all(r.ok for r in reports), [r.status for r in reports if not r.ok]
    return {"mode": mode, "workers": workers, "shards": len(reports), "bytes": size, "seconds": round(seconds, 3),
            "mb_per_s": round(size / 1e6 / seconds, 1),
            "records_per_s": round(sum(r.expected for r in reports) / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per setting")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from mimo_ds.data.shards import write_shards

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rows"
        write_shards(synthetic_rows(args.rows), folder, "rows", args.shard_size)
        for mode in ("full", "records"):
            for workers in args.workers:
                runs = [measure(folder, mode, workers) for _ in range(args.repeats)]
                results.append(min(runs, key=lambda r: r["seconds"]))

    table = Table(title=f"shards verify, {args.rows} rows × 14 languages in shards of {args.shard_size} "
                        f"({results[0]['bytes'] / 1e6:,.1f} MB), best of {args.repeats}")
    for col in ("mode", "processes", "MB/s", "records/s", "seconds"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["mode"], str(r["workers"]), f"{r['mb_per_s']:,.1f}", f"{r['records_per_s']:,.0f}",
                      f"{r['seconds']:.2f}")
    Console().print(table)

    write_result("verify", {"settings": {"rows": args.rows, "shard_size": args.shard_size, "repeats": args.repeats,
                                         "page_cache": "warm (shards just written)"},
                            "results": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
