"""The teacher cache: a frozen teacher's embeddings of a shard folder's English side, written once, read by the loader.

The teacher is frozen, so its embedding of a text never changes; encoding the English side of a corpus once
(`mimo-ds teacher-cache`) takes the teacher's forward passes, and the teacher itself, out of every training step.
A cache is made for one objective's teacher roles (`Objective.teacher_roles`), with the texts built by the same
function the loader uses (`mimo_ds.objectives.role_texts`), so the prompt rule cannot drift between the two.

Layout of a cache folder (rows are the shard folder's write positions, 0..total-1, so a record's row is the position
the loader already knows; records the writer could not read leave a zero row with an empty id):
- `<role>.npy`: float16 [total, dim], one per teacher role of the objective: `teacher` for stage 1 (the English
  side, no prompt); `teacher_query` (the English query WITH the teacher's query prompt) and `teacher_passage` for
  MIMO;
- `ids.npy`: the sample id of each row (bytes), so a lookup is checked against the id the shards hold there;
- `text_hash.npy`: uint64 hash of the exact texts the teacher saw for the row, so a reconverted corpus with the same
  shard names and counts, or another prompt, is caught at the first batch instead of training on wrong targets;
- `meta.json` (written last: a folder without one is an interrupted run): format, kind, the objective, the teacher
  fingerprint (`Teacher.fingerprint()`), the shard folder's `ShardIndex.fingerprint()`, dim, count, roles, skipped
  records.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mimo_ds.data.records import MISSING_SHARD, TRUNCATED_SHARD, UNINDEXED, BadRecord, check_member
from mimo_ds.data.shards import ShardIndex, ShardReadError, iter_shard, read_index
from mimo_ds.models.fingerprint import CHECKED_KEYS, fingerprint_of
from mimo_ds.models.teacher import config_width
from mimo_ds.objectives import Objective, objective_class, role_texts
from mimo_ds.versioned_json import read_versioned_json

DEFAULT_DIR = "teacher_cache"  # beside the shards: `<data.train>/teacher_cache`
META_NAME = "meta.json"
CACHE_FORMAT = 1
IDS_NAME = "ids.npy"
HASH_NAME = "text_hash.npy"


def teacher_texts(objective: type[Objective], records: Sequence[dict[str, Any]], query_prompt: str,
                  passage_prompt: str = "") -> dict[str, list[str]]:
    """Role → the exact texts the teacher sees for these records (English side, each role with its prompt)."""
    return role_texts(objective.teacher_roles, records, objective.shards, None, (query_prompt, passage_prompt))


def text_hashes(texts: dict[str, list[str]]) -> np.ndarray:
    """One uint64 per row over all its roles' texts (in role order): what ties a cached row to its exact input."""
    rows = zip(*(texts[role] for role in sorted(texts)))
    return np.array(
        [int.from_bytes(hashlib.blake2b("\x1f".join(row).encode(), digest_size=8).digest(), "little") for row in rows],
        dtype=np.uint64,
    )


# -- writing ----------------------------------------------------------------------------------------------------------
def _good_records(index: ShardIndex, skipped: Counter[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(write position, record) for every usable record, in write order; unusable ones are counted by reason."""
    kind = index.record_kind
    known = None if kind.parallel else index.languages
    for shard in index.shards:
        read = 0
        try:
            for member in iter_shard(index.path(shard)):
                read += 1
                bad = member.bad or check_member(member.key, member.record, kind, known)
                if bad is None and member.ordinal >= shard.count:
                    bad = BadRecord(UNINDEXED, f"{shard.name} holds more records than its index")
                if bad is not None:
                    skipped[bad.reason] += 1
                else:
                    yield shard.start + member.ordinal, member.record
        except ShardReadError as exc:
            lost = MISSING_SHARD if isinstance(exc.cause, FileNotFoundError) else TRUNCATED_SHARD
            skipped[lost] += max(0, shard.count - read)


def _encode(teacher: Any, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Role → float16 embeddings of exactly these texts."""
    out = {}
    for role, items in texts.items():
        emb = teacher.encode(items).cpu().numpy().astype(np.float16)
        if not np.isfinite(emb).all():
            raise ValueError(f"teacher embeddings for {role} overflow float16 (normalize the teacher or cache fp32)")
        out[role] = emb
    return out


def write_cache(
    teacher: Any,
    objective: type[Objective],
    shards: str | os.PathLike[str],
    out: str | os.PathLike[str],
    batch_size: int = 256,
    progress: bool = True,
) -> Path:
    """Encode `objective`'s teacher roles for every usable record of `shards` with `teacher` into `out`; returns
    meta.json's path.

    `teacher` is a loaded `mimo_ds.models.teacher.Teacher` (anything with `encode`, `fingerprint()`, `dim`, `cfg`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not objective.needs_teacher():
        raise ValueError(f"objective {objective.kind!r} uses no teacher: there is nothing to cache")
    index = read_index(shards)
    if index.record_kind != objective.shards:
        raise ValueError(f"objective {objective.kind!r} reads {objective.shards}; {index.folder} holds {index.kind}")
    out = Path(out)
    if (out / META_NAME).exists():
        raise FileExistsError(f"{out / META_NAME} exists: write the teacher cache into a fresh folder")
    out.mkdir(parents=True, exist_ok=True)
    n, dim, prompts = index.total, teacher.dim, (teacher.cfg.query_prompt, teacher.cfg.passage_prompt)
    roles = [role.name for role in objective.teacher_roles]
    arrays = {
        role: np.lib.format.open_memmap(out / f"{role}.npy", mode="w+", dtype=np.float16, shape=(n, dim))
        for role in roles
    }
    ids: list[bytes] = [b""] * n
    hashes = np.zeros(n, dtype=np.uint64)
    skipped: Counter[str] = Counter()
    records = _good_records(index, skipped)
    with tqdm(total=n, desc=f"teacher cache {index.folder.name}", unit="rec", disable=not progress) as bar:
        while chunk := list(islice(records, batch_size)):
            rows = np.array([pos for pos, _ in chunk])
            texts = teacher_texts(objective, [r for _, r in chunk], *prompts)
            for role, emb in _encode(teacher, texts).items():
                arrays[role][rows] = emb
            hashes[rows] = text_hashes(texts)
            for pos, record in chunk:
                ids[pos] = record["id"].encode()
            bar.update(len(chunk))
    for array in arrays.values():
        array.flush()
    np.save(out / IDS_NAME, np.array(ids, dtype=f"S{max(map(len, ids), default=0) or 1}"))
    np.save(out / HASH_NAME, hashes)
    meta = {
        "format": CACHE_FORMAT,
        "kind": index.kind,
        "objective": objective.kind,
        "fingerprint": teacher.fingerprint(),
        "shards": index.fingerprint(),
        "shards_folder": str(index.folder),
        "dim": dim,
        "count": n,
        "dtype": "float16",
        "roles": roles,
        "skipped": dict(sorted(skipped.items())),
    }
    tmp = out / (META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / META_NAME)
    return out / META_NAME


# -- reading and checking ---------------------------------------------------------------------------------------------
def read_cache_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """`folder/meta.json`, checked for format; errors name the folder (a missing one: an interrupted or no cache)."""
    return read_versioned_json(Path(folder) / META_NAME, CACHE_FORMAT,
                               "build the teacher cache with `mimo-ds teacher-cache` "
                               "(a folder without meta.json is an interrupted run)")


def check_cache(
    folder: str | os.PathLike[str], objective: type[Objective], teacher_fingerprint: dict[str, Any] | None,
    shards_fingerprint: str | None,
) -> dict[str, Any]:
    """Refuse a cache made for other teacher roles, by another teacher (path, pooling, normalize, prompt, max length,
    dim) or for other shards.

    Keys missing from `teacher_fingerprint`, or None there (a run that has not loaded its teacher knows no dim), are
    not compared; nor is a prompt no role of the objective carries (the query prompt without query roles, the passage prompt
    without other roles); a cache written before the passage prompt was recorded counts as written without one. Returns the
    meta on success.
    """
    meta = read_cache_meta(folder)
    diffs = []
    wanted = sorted(role.name for role in objective.teacher_roles)
    if sorted(meta["roles"]) != wanted:
        diffs.append(f"roles: the cache holds {sorted(meta['roles'])}, objective {objective.kind!r} needs {wanted}")
    unused = {"query_prompt": not any(role.query for role in objective.teacher_roles),
              "passage_prompt": all(role.query for role in objective.teacher_roles)}
    if shards_fingerprint is not None and meta["shards"] != shards_fingerprint:
        diffs.append(f"shards: the cache was made for {meta['shards_folder']} (fingerprint {meta['shards']}), "
                     f"these shards have fingerprint {shards_fingerprint}")
    cached = meta["fingerprint"]
    for key in CHECKED_KEYS:
        want = (teacher_fingerprint or {}).get(key)
        if want is None or unused.get(key, False):
            continue
        have = cached.get(key, "" if key == "passage_prompt" else None)
        if have != want:
            diffs.append(f"teacher {key}: cache {have!r}, run {want!r}")
    if diffs:
        raise ValueError(f"teacher cache {Path(folder)} does not fit this run: " + "; ".join(diffs))
    return meta


@dataclass
class TeacherCache:
    """A cache folder opened read-only and memory-mapped (cheap to open in every loader worker)."""

    folder: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    ids: np.ndarray
    hashes: np.ndarray

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> "TeacherCache":
        folder = Path(folder)
        meta = read_cache_meta(folder)
        arrays = {role: np.load(folder / f"{role}.npy", mmap_mode="r") for role in meta["roles"]}
        for role, array in arrays.items():
            if array.shape != (meta["count"], meta["dim"]):
                raise ValueError(f"{folder / f'{role}.npy'} has shape {array.shape}, meta.json says "
                                 f"({meta['count']}, {meta['dim']})")
        return cls(folder, meta, arrays, np.load(folder / IDS_NAME, mmap_mode="r"),
                   np.load(folder / HASH_NAME, mmap_mode="r"))

    def _embeddings(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {role: torch.from_numpy(np.asarray(a[rows], dtype=np.float32)) for role, a in self.arrays.items()}

    def take(
        self, positions: Sequence[int], ids: Sequence[str], texts: dict[str, list[str]]
    ) -> dict[str, torch.Tensor]:
        """The loader's lookup: rows by write position, checked against the ids and the exact teacher texts."""
        rows = np.asarray(positions, dtype=np.int64)
        if len(rows) and rows.max() >= len(self.ids):
            raise ValueError(f"teacher cache {self.folder} has {len(self.ids)} rows, the shards hold position "
                             f"{rows.max()}: the cache was written for other shards")
        wrong = np.nonzero(self.ids[rows] != np.array([i.encode() for i in ids]))[0]
        if len(wrong):
            row, sample = rows[wrong[0]], ids[int(wrong[0])]
            raise ValueError(f"teacher cache {self.folder}: row {row} holds {self.ids[row].decode()!r}, the shards "
                             f"hold {sample!r} there: the cache was written for other shards")
        wrong = np.nonzero(self.hashes[rows] != text_hashes(texts))[0]
        if len(wrong):
            raise ValueError(f"teacher cache {self.folder}: the teacher text of {ids[int(wrong[0])]!r} differs from "
                             "the one cached (another query prompt, or shards rewritten since the cache was made)")
        return self._embeddings(rows)


def check_run_cache(cfg: Any) -> dict[str, Any]:
    """Check a run config's `data.teacher_cache` against its objective, teacher section and `data.train`, without
    loading the teacher (so a mismatch costs seconds, before any process group starts); returns the cache's meta."""
    shards = read_index(cfg.data.train).fingerprint()
    return check_cache(cfg.data.teacher_cache, objective_class(cfg.objective.kind), fingerprint_of(cfg.teacher, None),
                       shards)


def teacher_width(cfg: Any) -> int:
    """The width of the teacher a run config distils from, without loading it: its cache's record, else its config."""
    if cfg.data.teacher_cache is not None:
        return int(read_cache_meta(cfg.data.teacher_cache)["fingerprint"]["dim"])
    return config_width(cfg.teacher)
