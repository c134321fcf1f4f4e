"""The teacher cache in parts: which write positions each part and each rank holds, a part's manifest, and the merge.

A cache is written as parts (`<out>/parts/part-NNNNNN/`), each the rows of a fixed range of write positions, then
merged into the cache's own files (`mimo_ds.data.teacher_cache`). Why parts:
- **Ranks share nothing.** Rank r of W writes the contiguous run of parts `r*P//W .. (r+1)*P//W - 1` (P parts),
  so N ranks encode at N times the rate and meet only at the merge.
- **Resumable.** A part is written under a temporary name and renamed once complete, its manifest written last
  inside it: a part folder that exists is finished. A killed job run again skips those parts and says so.
- **Byte-identical to one process.** Part boundaries are multiples of the window (the positions whose texts are
  sorted by length together, `mimo_ds.data.teacher_cache.encode_grouped`), and windows start at multiples of the
  window from position 0. So every teacher forward holds the same texts, padded to the same width, whatever the
  number of ranks; the part size and the world size only decide who computes a window, never what it computes.
  (Same hardware, library versions and thread settings assumed: a forward's floating-point result can differ
  between CPU thread counts or GPU models, never between ranks of one job.)
- **Never mixed.** A manifest records what its rows depend on (shards, teacher fingerprint and dtype, objective,
  roles, window, position range); a part that differs from this run's is refused by name (exit 2), never reused.
  The part size and world size are not recorded: a requeued job may run on another number of ranks and keep every
  finished part, as long as the part size (hence each part's range) is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimo_ds.errors import InputError

IDS_NAME = "ids.npy"         # the file names of a part and of the merged cache alike
HASH_NAME = "text_hash.npy"
PARTS_DIR = "parts"
MANIFEST = "manifest.json"
PART_FORMAT = 1
DEFAULT_WINDOW = 4096       # write positions sorted by length together: small next to a part, large for grouping
DEFAULT_PART_SIZE = 32768   # write positions per part: what a killed rank loses at most (minutes for an 8B teacher)


@dataclass(frozen=True)
class PartPlan:
    """How `total` write positions split into windows and parts, and parts into ranks."""

    total: int
    window: int
    part_size: int

    def __post_init__(self) -> None:
        if self.window < 1 or self.part_size < 1:
            raise InputError(f"window ({self.window}) and part size ({self.part_size}) must be at least 1")
        if self.part_size % self.window:
            raise InputError(f"the part size ({self.part_size}) must be a multiple of the window ({self.window}): "
                             "a window split between two parts would be batched differently by 1 and N ranks")

    @property
    def count(self) -> int:
        return -(-self.total // self.part_size)

    def bounds(self, part: int) -> tuple[int, int]:
        """The write positions [start, stop) of `part`."""
        start = part * self.part_size
        return start, min(start + self.part_size, self.total)

    def rank_parts(self, rank: int, world: int) -> range:
        """The contiguous run of parts rank `rank` of `world` writes (empty when there are fewer parts than ranks)."""
        return range(rank * self.count // world, (rank + 1) * self.count // world)

    def windows(self, part: int) -> list[tuple[int, int]]:
        start, stop = self.bounds(part)
        return [(a, min(a + self.window, stop)) for a in range(start, stop, self.window)]

    def describe(self, world: int) -> list[str]:
        """One line per rank: its parts and write positions (the dry run of `slurm/teacher_cache.sh` prints them)."""
        lines = []
        for rank in range(world):
            parts = self.rank_parts(rank, world)
            if not parts:
                lines.append(f"rank {rank}: no part (the {self.total} positions make {self.count} part(s) of "
                             f"{self.part_size})")
                continue
            start, stop = self.bounds(parts[0])[0], self.bounds(parts[-1])[1]
            which = f"part {parts[0]}" if len(parts) == 1 else f"parts {parts[0]}..{parts[-1]}"
            lines.append(f"rank {rank}: {which}, write positions {start}..{stop - 1} ({stop - start} records)")
        return lines


def part_name(part: int) -> str:
    return f"part-{part:06d}"


def part_folder(out: Path, part: int) -> Path:
    return out / PARTS_DIR / part_name(part)


def temp_folder(out: Path, part: int) -> Path:
    """Where `part` is written before it is renamed: unique per host and process, so two writers never share it."""
    return out / PARTS_DIR / f".{part_name(part)}.tmp-{socket.gethostname()}-{os.getpid()}"


def remove_stale_temps(out: Path, part: int) -> None:
    """Folders a killed writer of `part` left behind (only the rank that owns `part` now calls this)."""
    for stale in (out / PARTS_DIR).glob(f".{part_name(part)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def identity_of(*, kind: str, objective: str, roles: list[str], fingerprint: dict[str, Any], dtype: str,
                shards: str, dim: int, window: int) -> dict[str, Any]:
    """What a part's rows depend on, besides its position range (recorded in its manifest and compared)."""
    return {"format": PART_FORMAT, "kind": kind, "objective": objective, "roles": roles, "fingerprint": fingerprint,
            "dtype": dtype, "shards": shards, "dim": dim, "window": window}


def publish_part(temp: Path, final: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last, then rename the folder: a part folder under its final name is complete."""
    manifest = {**manifest, "files": {p.name: p.stat().st_size for p in sorted(temp.iterdir())}}
    (temp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(temp, final)


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    diffs = []
    for key, want in wanted.items():
        have = found.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            diffs += [f"{key}.{k}: part {have.get(k)!r}, this run {v!r}" for k, v in want.items() if have.get(k) != v]
        elif have != want:
            diffs.append(f"{key}: part {have!r}, this run {want!r}")
    return diffs


def read_part(folder: Path, identity: dict[str, Any], bounds: tuple[int, int]) -> dict[str, Any]:
    """A finished part's manifest, refused (InputError, naming the part) when it was written from other inputs, for
    another position range, or its files are not the size it recorded."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"teacher-cache part {folder} has no readable {MANIFEST} ({exc}): remove that folder to "
                         "write the part again") from None
    diffs = _differences(manifest, {**identity, "start": bounds[0], "stop": bounds[1]})
    if diffs:
        raise InputError(f"teacher-cache part {folder} was written from other inputs than this run's ("
                         + "; ".join(diffs) + f"): remove {folder.parent} to rebuild the parts, or run with the "
                         "inputs that wrote them (the same config, --window and --part-size)")
    for name, size in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            have = path.stat().st_size if path.is_file() else "no file"
            raise InputError(f"teacher-cache part {folder}: {name} has {have} bytes, its manifest recorded {size}: "
                             f"remove {folder} to write the part again")
    return manifest


def finished_parts(out: Path, plan: PartPlan, identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """part → manifest for every finished part under `out`, each checked against this run (before any teacher
    loads); a part folder this plan has no place for (another part size, other shards) is refused too."""
    root = out / PARTS_DIR
    if not root.is_dir():
        return {}
    done = {}
    for folder in sorted(root.glob("part-*")):
        part = int(folder.name.removeprefix("part-")) if folder.name.removeprefix("part-").isdigit() else -1
        if not 0 <= part < plan.count:
            raise InputError(f"teacher-cache part {folder} does not belong to this run's {plan.count} part(s) of "
                             f"{plan.part_size} positions (another --part-size, or other shards): remove {root} to "
                             "rebuild the parts")
        done[part] = read_part(folder, identity, plan.bounds(part))
    return done


def _load(folder: Path, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    array = np.load(folder / name, mmap_mode="r")
    if array.shape[: len(shape)] != shape or (dtype != "S" and array.dtype != np.dtype(dtype)) \
            or (dtype == "S" and array.dtype.kind != "S"):
        raise InputError(f"teacher-cache part {folder}: {name} has shape {array.shape} and dtype {array.dtype}, "
                         f"expected {shape} of {dtype}: remove {folder} to write the part again")
    return array


def merge_parts(out: Path, plan: PartPlan, identity: dict[str, Any]) -> dict[str, Any]:
    """Check every part and copy them into the cache's own files under `out`; returns what meta.json needs from the
    parts (count, skipped, token tallies). Refuses, naming it, a part missing, from other inputs, or malformed."""
    manifests = finished_parts(out, plan, identity)
    if missing := [part_name(p) for p in range(plan.count) if p not in manifests]:
        raise InputError(f"teacher cache {out}: {len(missing)} part(s) are not written yet ({', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}): run the same command again to write them")
    dim, roles = identity["dim"], identity["roles"]
    arrays = {role: np.lib.format.open_memmap(out / f"{role}.npy", mode="w+", dtype=np.float16,
                                              shape=(plan.total, dim)) for role in roles}
    ids: list[bytes] = []
    hashes = np.zeros(plan.total, dtype=np.uint64)
    skipped: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for part in range(plan.count):
        folder, (start, stop) = part_folder(out, part), plan.bounds(part)
        for role in roles:
            arrays[role][start:stop] = _load(folder, f"{role}.npy", (stop - start, dim), "float16")
        part_ids = _load(folder, IDS_NAME, (stop - start,), "S").tolist()
        if (rows := sum(map(bool, part_ids))) != manifests[part]["rows"]:
            raise InputError(f"teacher-cache part {folder}: {IDS_NAME} holds {rows} records, its manifest "
                             f"{manifests[part]['rows']}: remove {folder} to write the part again")
        ids += part_ids
        hashes[start:stop] = _load(folder, HASH_NAME, (stop - start,), "uint64")
        skipped.update(manifests[part]["skipped"])
        tokens.update(manifests[part]["tokens"])
    for array in arrays.values():
        array.flush()
    np.save(out / IDS_NAME, np.array(ids, dtype=f"S{max(map(len, ids), default=0) or 1}"))
    np.save(out / HASH_NAME, hashes)
    return {"skipped": dict(sorted(skipped.items())), "tokens": dict(sorted(tokens.items()))}
