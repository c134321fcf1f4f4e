"""Checking a shard folder against its `index.json`: before a run (`check_shards`, preflight) and on demand
(`verify_folder`, `mimo-ds shards verify DIR`).

Three depths, each including the one before:
- `size`: every listed shard exists and has the size the writer recorded (one `stat` per shard);
- `full`: and its sha256 is the recorded one;
- `records`: and every record decodes and is a valid record of the folder's kind under its own key, and the shard
  holds as many as the index says. The hash is computed from the same read (one pass over the bytes).
An index written before checksums existed (no `size`/`sha256`) is still checked as deep as it can be: its shards are
reported as "no checksum recorded", which is not a failure.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Literal

from tqdm import tqdm

from mimo_ds.data.records import HASH_MISMATCH, TRUNCATED_SHARD, UNINDEXED, check_member
from mimo_ds.data.shards import ShardIndex, ShardInfo, ShardReadError, check_shard_file, iter_shard, read_index
from mimo_ds.errors import InputError, MissingInput

Mode = Literal["size", "full", "records"]
MODES: tuple[str, ...] = ("size", "full", "records")
NO_CHECKSUM = "no checksum recorded"


@dataclass
class ShardReport:
    """What one shard's check found. `problems` empty means the shard is as the index says; `notes` never fail it."""

    name: str
    size: int | None = None
    records: int | None = None  # records read (records mode)
    expected: int = 0  # records the index lists
    bad: dict[str, int] = field(default_factory=dict)  # bad records by reason (records mode)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        return "; ".join(self.problems) if self.problems else "ok" + (f" ({', '.join(self.notes)})" if self.notes else "")


class _HashingReader:
    """A read-only file wrapper that hashes what passes through it, so reading the records also checks the sha256."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        """Hash the rest of the file (what the tar reader left: end-of-archive padding, or all after a break)."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def _read_records(index: ShardIndex, shard: ShardInfo, report: ShardReport) -> str:
    """Read every record of `shard` into `report`; returns the file's sha256."""
    path = index.path(shard)
    known = index.available_languages
    bad: Counter[str] = Counter()
    read = 0
    with open(path, "rb") as raw:
        stream = _HashingReader(raw)
        try:
            for member in iter_shard(path, stream):
                read += 1
                problem = member.bad or check_member(member.key, member.record, index.kind, known)
                if problem is not None:
                    bad[problem.reason] += 1
        except ShardReadError as exc:
            report.problems.append(f"unreadable after {exc.read} records: {exc.cause}")
        digest = stream.finish()
    report.records = read
    if read < shard.count:
        bad[TRUNCATED_SHARD] += shard.count - read
    elif read > shard.count:
        bad[UNINDEXED] += read - shard.count
    report.bad = dict(sorted(bad.items()))
    if bad:
        report.problems.append("bad records: " + ", ".join(f"{k}={v}" for k, v in report.bad.items()))
    return digest


def verify_shard(index: ShardIndex, shard: ShardInfo, mode: Mode) -> ShardReport:
    """Check one shard of `index` to the depth `mode` (see the module docstring)."""
    report = ShardReport(shard.name, expected=shard.count)
    problem = check_shard_file(index.path(shard), shard, full=mode == "full")
    if problem is not None:
        report.problems.append(problem.detail)
        if problem.reason != HASH_MISMATCH and not (mode == "records" and index.path(shard).is_file()):
            return report
    if index.path(shard).is_file():
        report.size = index.path(shard).stat().st_size
    if shard.size is None or shard.sha256 is None:
        report.notes.append(NO_CHECKSUM)
    if mode == "records":
        digest = _read_records(index, shard, report)
        if shard.sha256 is not None and digest != shard.sha256:
            report.problems.insert(0, f"sha256 {digest[:12]}… differs from the index's {shard.sha256[:12]}…")
    return report


def _verify_one(args: tuple[ShardIndex, ShardInfo, Mode]) -> ShardReport:
    return verify_shard(*args)


def read_shard_index(folder: str | os.PathLike[str], require_files: bool = True) -> ShardIndex:
    """`read_index` for a folder the user named on a command line: what is wrong with it becomes a UserError (one
    line, status 2) that names the folder, instead of a traceback."""
    path = Path(folder)
    if not path.exists():
        raise MissingInput(f"{path}: no such folder (a shard folder written by `mimo-ds shards`)")
    if not path.is_dir():
        raise InputError(f"{path} is a file; a shard folder (with index.json) was expected")
    try:
        return read_index(path, require_files=require_files)
    except FileNotFoundError as exc:
        raise MissingInput(str(exc)) from exc
    except (ValueError, PermissionError) as exc:
        raise InputError(str(exc)) from exc


def verify_folder(
    folder: str | os.PathLike[str], mode: Mode = "records", workers: int | None = None, progress: bool = False,
    on_report: Callable[[ShardReport], None] | None = None,
) -> tuple[ShardIndex, list[ShardReport]]:
    """Check every shard listed in `folder/index.json`, `workers` processes in parallel (default: one per CPU);
    reports in index order. A missing or unreadable index is a UserError naming it (`read_shard_index`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    index = read_shard_index(folder, require_files=False)
    jobs = [(index, shard, mode) for shard in index.shards]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=len(jobs), unit="shard", desc=f"verify {index.folder.name}", disable=not progress)
    results: Iterable[ShardReport]
    if workers == 1 or mode == "size":
        results = map(_verify_one, jobs)
        reports = _collect(results, bar, on_report)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reports = _collect(pool.map(_verify_one, jobs, chunksize=1), bar, on_report)
    bar.close()
    return index, reports


def _collect(results: Iterable[ShardReport], bar: tqdm, on_report: Callable[[ShardReport], None] | None
             ) -> list[ShardReport]:
    reports = []
    for report in results:
        reports.append(report)
        bar.update(1)
        if on_report is not None:
            on_report(report)
    return reports


def check_shards(folder: str | os.PathLike[str], mode: Literal["size", "full"] = "size",
                 workers: int | None = None) -> list[ShardReport]:
    """Preflight: every shard of `folder` exists with the recorded size (and, with `full`, sha256). Raises a
    ValueError with one message naming each bad shard; returns the reports (notes such as "no checksum recorded"
    included) when all are as the index says."""
    if mode not in ("size", "full"):
        raise ValueError(f"data.verify must be 'size' or 'full', got {mode!r}")
    index, reports = verify_folder(folder, mode, workers)
    bad = [r for r in reports if not r.ok]
    if bad:
        listed = "; ".join(f"{r.name}: {r.status}" for r in bad)
        raise ValueError(f"{index.folder}: {len(bad)} of {len(reports)} shards are not as index.json recorded them "
                         f"({listed}). `mimo-ds shards verify {index.folder}` checks every record.")
    return reports


def report_json(index: ShardIndex, reports: list[ShardReport], mode: Mode) -> dict:
    """The machine-readable report of `mimo-ds shards verify --json`."""
    return {
        "folder": str(index.folder),
        "mode": mode,
        "shards": len(reports),
        "ok": sum(r.ok for r in reports),
        "bytes": sum(r.size or 0 for r in reports),
        "reports": [{**asdict(r), "ok": r.ok, "status": r.status} for r in reports],
    }
