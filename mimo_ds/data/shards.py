"""Writing and reading WebDataset shard folders: many small tar shards plus an `index.json` that describes them.

The index is what makes streaming plannable without reading data: per-shard counts (and per-language counts for
pairs) let every rank and worker compute the same epoch plan, the same batch count and the same resume point on its
own, with no communication and no pass over the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import webdataset as wds

from mimo_ds.data.records import (
    HASH_MISMATCH,
    MISSING_MEMBER,
    MISSING_SHARD,
    SIZE_MISMATCH,
    BadRecord,
    check_record,
    decode_record,
    encode_record,
)
from mimo_ds.hashing import file_sha256
from mimo_ds.record_kinds import RecordKind, record_kind
from mimo_ds.versioned_json import read_versioned_json

INDEX_NAME = "index.json"
# Format 1 gained `size` and `sha256` per shard without a bump: they are optional, so an index written before them
# still reads (its shards are then checked by count only; `mimo-ds shards verify` says "no checksum recorded").
INDEX_FORMAT = 1
MEMBER = "json"


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the index lists it; `start` is the write position of its first record in the whole folder.

    `size` (bytes) and `sha256` (hex) are what the writer recorded; None in an index written before they existed.
    """

    name: str
    count: int
    start: int
    lang_counts: dict[str, int]
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ShardIndex:
    """A shard folder's `index.json`, checked."""

    folder: Path
    kind: str
    shards: tuple[ShardInfo, ...]
    languages: tuple[str, ...]
    row_languages: tuple[str, ...]
    source: str | None
    filter_report: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def record_kind(self) -> RecordKind:
        """The declaration of `kind` (checked when the index was read)."""
        return record_kind(self.kind)

    @property
    def available_languages(self) -> tuple[str, ...]:
        """The languages a loader may select: any of a tagged kind's, those every record holds of a parallel kind's."""
        return self.row_languages if self.record_kind.parallel else self.languages

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    def path(self, shard: ShardInfo) -> Path:
        return self.folder / shard.name

    def fingerprint(self) -> str:
        """Identifies the data (names, counts, kind, languages): a resume or a teacher cache must match it."""
        payload = json.dumps(
            [self.kind, self.languages, [(s.name, s.count) for s in self.shards]], separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_shards(
    records: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    kind: RecordKind | str,
    shard_size: int,
    *,
    source: str | None = None,
    filter_report: dict[str, Any] | None = None,
    prefix: str = "shard",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `records` (validated, ids unique) into `{prefix}-NNNNNN.tar` shards of `shard_size` and an index.

    `index.json` is written last, so a folder without one is an interrupted conversion. A bad record raises with the
    record's position and id: converters are expected to filter (and count) before writing. Returns the index path.
    """
    kind = record_kind(kind)
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_NAME).exists():
        raise FileExistsError(f"{out / INDEX_NAME} exists: write into a fresh folder (shards are never appended)")
    stale = sorted(out.glob(f"{prefix}-*.tar"))
    if stale:
        raise FileExistsError(f"{out} already holds shards such as {stale[0].name}: write into a fresh folder")

    shards: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    languages: Counter[str] = Counter()
    row_languages: set[str] | None = None
    writer: wds.TarWriter | None = None
    lang_counts: Counter[str] = Counter()
    count = 0

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            path = out / f"{prefix}-{len(shards):06d}.tar"
            shards.append({"name": path.name, "count": count, "lang_counts": dict(lang_counts),
                           "size": path.stat().st_size, "sha256": file_sha256(path)})
            writer = None

    try:
        for position, record in enumerate(records):
            bad = check_record(record, kind)
            if bad is not None:
                rid = record.get("id") if isinstance(record, dict) else None
                raise ValueError(f"record {position} (id {rid!r}) is not a valid {kind} record: {bad}")
            if record["id"] in seen_ids:
                raise ValueError(f"record {position}: id {record['id']!r} is not unique")
            seen_ids.add(record["id"])
            if writer is None:
                name = f"{prefix}-{len(shards):06d}.tar"
                writer = wds.TarWriter(str(out / name), encoder=False, mtime=0, format="PAX_FORMAT")
                count, lang_counts = 0, Counter()
            writer.write({"__key__": record["id"], MEMBER: encode_record(record)})
            langs = kind.record_languages(record)
            count += 1
            lang_counts.update(langs)
            languages.update(langs)
            row_languages = langs if row_languages is None else row_languages & langs
            if count == shard_size:
                close()
        close()
    finally:
        if writer is not None:
            writer.close()

    index = {
        "format": INDEX_FORMAT,
        "kind": kind.name,
        "source": source,
        "total": sum(s["count"] for s in shards),
        "languages": sorted(languages),
        "language_counts": dict(sorted(languages.items())),
        "row_languages": sorted(row_languages or ()) if kind.parallel else None,
        "shards": shards,
        "filter_report": filter_report or {},
        **(extra or {}),
    }
    path = out / INDEX_NAME
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _checksum(entry: dict[str, Any], path: Path, i: int) -> tuple[int | None, str | None]:
    size, sha256 = entry.get("size"), entry.get("sha256")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"{path}: shard entry {i} has size {size!r}, not a byte count")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64):
        raise ValueError(f"{path}: shard entry {i} has sha256 {sha256!r}, not 64 hex digits")
    return size, sha256


def read_index(folder: str | os.PathLike[str], require_files: bool = True) -> ShardIndex:
    """Read and check `folder/index.json`; errors name the folder and the problem.

    With `require_files` every listed shard must exist. The training loader reads with it off: a shard missing at
    read time is counted (`missing_shard`) against the bad-record ceiling rather than refused up front, which is
    preflight's job (`mimo_ds.data.verify.check_shards`).
    """
    folder = Path(folder)
    path = folder / INDEX_NAME
    raw = read_versioned_json(path, INDEX_FORMAT, f"is {folder} a shard folder written by `mimo-ds shards`?")
    kind = raw.get("kind")
    try:
        record_kind(kind)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    shards, start = [], 0
    for i, entry in enumerate(raw.get("shards") or []):
        try:
            name, count = str(entry["name"]), int(entry["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: shard entry {i} needs a name and a count: {entry!r}") from exc
        if require_files and not (folder / name).is_file():
            raise FileNotFoundError(f"{path} lists {name}, which is missing from {folder}")
        lang_counts = {k: int(v) for k, v in (entry.get("lang_counts") or {}).items()}
        shards.append(ShardInfo(name, count, start, lang_counts, *_checksum(entry, path, i)))
        start += count
    if not shards:
        raise ValueError(f"{path} lists no shards")
    return ShardIndex(
        folder=folder,
        kind=kind,
        shards=tuple(shards),
        languages=tuple(raw.get("languages") or ()),
        row_languages=tuple(raw.get("row_languages") or ()),
        source=raw.get("source"),
        filter_report=raw.get("filter_report") or {},
        raw=raw,
    )


def check_shard_file(path: Path, shard: ShardInfo, full: bool) -> BadRecord | None:
    """Why the file at `path` is not the shard the index recorded (missing, another size, with `full` another sha256),
    or None. A checksum the index does not hold is not checked."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return BadRecord(MISSING_SHARD, f"{path} is missing")
    if shard.size is not None and size != shard.size:
        return BadRecord(SIZE_MISMATCH, f"{path} has {size:,} bytes, the index recorded {shard.size:,}")
    if full and shard.sha256 is not None and (digest := file_sha256(path)) != shard.sha256:
        return BadRecord(HASH_MISMATCH, f"{path} has sha256 {digest[:12]}…, the index recorded {shard.sha256[:12]}…")
    return None


@dataclass
class ShardMember:
    """One sample read from a shard: its key, its ordinal in the shard, and its record or the reason it has none."""

    key: str
    ordinal: int
    record: dict[str, Any] | None
    bad: BadRecord | None


class ShardReadError(Exception):
    """The tar stream itself broke (truncated or corrupt); `read` samples came out before it did."""

    def __init__(self, path: Path, read: int, cause: BaseException):
        super().__init__(f"{path}: tar stream broke after {read} samples: {cause}")
        self.path, self.read, self.cause = path, read, cause


def iter_shard(path: Path, stream: BinaryIO | None = None) -> Iterator[ShardMember]:
    """The samples of one shard in order, decoded but not validated against a kind; read from `stream` when given
    (`path` then only names it), else from the file.

    A broken tar stream raises `ShardReadError` after the samples before the break, so the caller can count what was
    lost against the index. Grouping and member parsing are webdataset's, so a shard that webdataset itself reads is
    read the same way here.
    """
    read = 0
    try:
        with (nullcontext(stream) if stream is not None else open(path, "rb")) as source:
            members = ({**m, "__url__": str(path)} for m in wds.tariterators.tar_file_iterator(source))
            for sample in wds.tariterators.group_by_keys(members):
                key = sample["__key__"]
                data = sample.get(MEMBER)
                if data is None:
                    record, bad = None, BadRecord(MISSING_MEMBER, f"sample {key!r} has no {MEMBER!r} member")
                else:
                    record, bad = decode_record(data)
                yield ShardMember(key, read, record, bad)
                read += 1
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ShardReadError(path, read, exc) from exc

