"""The teacher cache: a frozen teacher's embeddings of a shard folder's English side, written once, read by the loader.

The teacher is frozen, so its embedding of a text never changes; encoding the English side of a corpus once
(`mimo-ds teacher-cache`) takes the teacher's forward passes, and the teacher itself, out of every training step.
A cache is made for one objective's teacher roles (`Objective.teacher_roles`), with the texts built by the same
function the loader uses (`mimo_ds.objectives.role_texts`), so the prompt rule cannot drift between the two.

Layout of a cache folder (rows are the shard folder's write positions, 0..total-1, so a record's row is the position
the loader already knows; records the writer could not read leave a zero row with an empty id):
- `<role>.npy`: float16 [total, dim], one per teacher role of the objective: `teacher` for stage 1 (the English
  side with the teacher's passage prompt, empty by default); `teacher_query` (the English query WITH the teacher's query prompt) and `teacher_passage` for
  MIMO;
- `ids.npy`: the sample id of each row (bytes), so a lookup is checked against the id the shards hold there;
- `text_hash.npy`: uint64 hash of the exact texts the teacher saw for the row, so a reconverted corpus with the same
  shard names and counts, or another prompt, is caught at the first batch instead of training on wrong targets;
- `meta.json` (written last: a folder without one is an interrupted run): format, kind, the objective, the teacher
  fingerprint (`Teacher.fingerprint()`), the shard folder's `ShardIndex.fingerprint()`, dim, count, roles, window,
  skipped records, and the real and computed (padded) token counts of the teacher's forwards.

It is written in parts, by one process or by every rank of a job, and merged (`mimo_ds.data.cache_parts` says why
the result is byte-identical whatever the number of ranks): `write_cache` is the one-process path, `write_parts` and
`merge_cache` the pieces `mimo-ds teacher-cache` runs on each rank and on rank 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mimo_ds.data.cache_parts import (
    DEFAULT_PART_SIZE, DEFAULT_WINDOW, HASH_NAME, IDS_NAME, PARTS_DIR, PartPlan, finished_parts, identity_of,
    merge_parts, part_folder, part_name, publish_part, remove_stale_temps, temp_folder,
)
from mimo_ds.data.records import MISSING_SHARD, TRUNCATED_SHARD, UNINDEXED, BadRecord, check_member
from mimo_ds.data.shards import ShardIndex, ShardReadError, iter_shard, read_index
from mimo_ds.errors import ExistingOutput, InputError
from mimo_ds.models.fingerprint import CHECKED_KEYS, fingerprint_of
from mimo_ds.models.teacher import config_width, teacher_dtype
from mimo_ds.objectives import Objective, objective_class, role_texts
from mimo_ds.versioned_json import read_versioned_json

DEFAULT_DIR = "teacher_cache"  # beside the shards: `<data.train>/teacher_cache`
META_NAME = "meta.json"
CACHE_FORMAT = 1


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
def _good_records(
    index: ShardIndex, skipped: Counter[str], start: int, stop: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(write position, record) for every usable record at positions [start, stop), in write order; unusable ones
    are counted by reason.

    Every unusable record is counted by exactly one range, so the parts' counts add up to one pass's: a bad record
    at its position, a record past its shard's indexed count at the shard's last position, and the records a
    missing, broken or short shard lost at the positions they would have held."""
    kind = index.record_kind
    known = None if kind.parallel else index.languages
    last = index.total - 1
    for shard in index.shards:
        if shard.start >= stop or shard.start + max(shard.count, 1) <= start:
            continue
        read, lost = 0, TRUNCATED_SHARD  # a shard that ends early without a tar error lost its tail too
        try:
            for member in iter_shard(index.path(shard)):
                read += 1
                at = min(shard.start + min(member.ordinal, max(shard.count - 1, 0)), last)
                if at >= stop:
                    read = shard.count  # past this range: what follows is another range's to count
                    break
                if at < start:
                    continue
                bad = member.bad or check_member(member.key, member.record, kind, known)
                if bad is None and member.ordinal >= shard.count:
                    bad = BadRecord(UNINDEXED, f"{shard.name} holds more records than its index")
                if bad is not None:
                    skipped[bad.reason] += 1
                else:
                    yield shard.start + member.ordinal, member.record
        except ShardReadError as exc:
            lost = MISSING_SHARD if isinstance(exc.cause, FileNotFoundError) else TRUNCATED_SHARD
        if (missing := min(shard.start + shard.count, stop) - max(shard.start + read, start)) > 0:
            skipped[lost] += missing


def encode_grouped(teacher: Any, texts: list[str]) -> tuple[torch.Tensor, int, int]:
    """float32 [len(texts), dim] in the order of `texts`, with the real and the computed (padded) token counts.

    The texts are tokenised together, ordered longest first (ties by position, so the order depends on the texts
    alone) and cut into forwards of `teacher.cfg.mini_batch` rows, each trimmed to its own longest row: a forward
    pays for little padding, and the first one is the largest, so a batch that does not fit fails at once. Trimming
    a row padded to the window's longest gives the tokens the tokenizer gives it padded to the forward's longest;
    each embedding is written back at its own row.
    """
    tokens = teacher.tokenize(texts)
    mask = tokens["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    width, left = mask.shape[1], teacher.tokenizer.padding_side == "left"
    out = torch.empty(len(texts), teacher.dim)
    computed = 0
    for first in range(0, len(order), teacher.cfg.mini_batch):
        rows = order[first : first + teacher.cfg.mini_batch]
        longest = lengths[rows[0]]
        columns = slice(width - longest, width) if left else slice(0, longest)
        out[rows] = teacher.encode_tokens({k: v[rows][:, columns] for k, v in tokens.items()}).float().cpu()
        computed += len(rows) * longest
    return out, int(sum(lengths)), computed


def _float16(role: str, emb: torch.Tensor) -> np.ndarray:
    out = emb.numpy().astype(np.float16)
    if not np.isfinite(out).all():
        raise ValueError(f"teacher embeddings for {role} overflow float16 (normalize the teacher or cache fp32)")
    return out


def cache_identity(objective: type[Objective], index: ShardIndex, fingerprint: dict[str, Any], dtype: torch.dtype,
                   window: int) -> dict[str, Any]:
    """What a part's rows depend on (`cache_parts.identity_of`), from a run's pieces; the CLI computes it before the
    teacher loads (fingerprint from the config), `write_parts` from the loaded teacher: both must agree."""
    return identity_of(kind=index.kind, objective=objective.kind, roles=[r.name for r in objective.teacher_roles],
                       fingerprint=fingerprint, dtype=str(dtype), shards=index.fingerprint(),
                       dim=int(fingerprint["dim"]), window=window)


def _teacher_identity(teacher: Any, objective: type[Objective], index: ShardIndex, window: int) -> dict[str, Any]:
    return cache_identity(objective, index, teacher.fingerprint(), teacher_dtype(teacher.cfg.dtype, teacher.device),
                          window)


def _write_part(teacher: Any, objective: type[Objective], index: ShardIndex, out: Path, plan: PartPlan, part: int,
                identity: dict[str, Any], bar: tqdm) -> None:
    """Encode the records of `part` into a temporary folder, then publish it (`cache_parts.publish_part`)."""
    start, stop = plan.bounds(part)
    remove_stale_temps(out, part)
    temp = temp_folder(out, part)
    temp.mkdir(parents=True)
    arrays = {role: np.lib.format.open_memmap(temp / f"{role}.npy", mode="w+", dtype=np.float16,
                                              shape=(stop - start, teacher.dim)) for role in identity["roles"]}
    ids: list[bytes] = [b""] * (stop - start)
    hashes = np.zeros(stop - start, dtype=np.uint64)
    skipped: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    records = _good_records(index, skipped, start, stop)
    for _, window in groupby(records, key=lambda item: item[0] // plan.window):
        chunk = list(window)
        rows = np.array([pos - start for pos, _ in chunk])
        texts = teacher_texts(objective, [r for _, r in chunk], teacher.cfg.query_prompt, teacher.cfg.passage_prompt)
        for role, items in texts.items():
            emb, real, computed = encode_grouped(teacher, items)
            arrays[role][rows] = _float16(role, emb)
            tokens.update(real=real, computed=computed)
        hashes[rows] = text_hashes(texts)
        for pos, record in chunk:
            ids[pos - start] = record["id"].encode()
        bar.update(len(chunk))
    for array in arrays.values():
        array.flush()
    np.save(temp / IDS_NAME, np.array(ids, dtype=f"S{max(map(len, ids), default=0) or 1}"))
    np.save(temp / HASH_NAME, hashes)
    publish_part(temp, part_folder(out, part), {**identity, "start": start, "stop": stop,
                                                "rows": sum(map(bool, ids)), "skipped": dict(sorted(skipped.items())),
                                                "tokens": dict(sorted(tokens.items()))})


def write_parts(
    teacher: Any, objective: type[Objective], shards: str | os.PathLike[str], out: str | os.PathLike[str],
    plan: PartPlan, rank: int = 0, world: int = 1, progress: bool = True,
) -> list[int]:
    """Write rank `rank` of `world`'s parts of the cache that are not finished yet; returns the parts it wrote.

    Finished parts are checked against this run (refused when from other inputs) and skipped, saying so."""
    index = read_index(shards)
    out = Path(out)
    identity = _teacher_identity(teacher, objective, index, plan.window)
    done = finished_parts(out, plan, identity)
    mine = plan.rank_parts(rank, world)
    todo = [part for part in mine if part not in done]
    if skipped := [part for part in mine if part in done]:
        print(f"teacher cache rank {rank}: {len(skipped)} of its {len(mine)} part(s) finished earlier, skipped: "
              f"{part_name(skipped[0])}..{part_name(skipped[-1])}", flush=True)
    positions = sum(plan.bounds(p)[1] - plan.bounds(p)[0] for p in todo)
    began = time.perf_counter()
    with tqdm(total=positions, desc=f"teacher cache {index.folder.name} rank {rank}", unit="rec",
              disable=not progress) as bar:
        for part in todo:
            _write_part(teacher, objective, index, out, plan, part, identity, bar)
    if todo and progress:
        texts, seconds = bar.n * len(identity["roles"]), time.perf_counter() - began
        print(f"teacher cache rank {rank}: {len(todo)} part(s), {texts} texts in {seconds:.1f} s "
              f"({texts / seconds:.1f} texts/s)", flush=True)
    return todo


def merge_cache(out: str | os.PathLike[str], plan: PartPlan, identity: dict[str, Any], index: ShardIndex) -> Path:
    """Check and merge every part into the cache, write meta.json last, remove the parts; returns meta.json's path."""
    out = Path(out)
    merged = merge_parts(out, plan, identity)
    meta = {
        "format": CACHE_FORMAT,
        "kind": index.kind,
        "objective": identity["objective"],
        "fingerprint": identity["fingerprint"],
        "shards": index.fingerprint(),
        "shards_folder": str(index.folder),
        "dim": identity["dim"],
        "count": plan.total,
        "dtype": "float16",
        "roles": identity["roles"],
        "window": plan.window,
        "skipped": merged["skipped"],
        "tokens": merged["tokens"],
    }
    tmp = out / (META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / META_NAME)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    return out / META_NAME


def check_writable(objective: type[Objective], index: ShardIndex, out: Path) -> None:
    """Refuse, before any teacher loads, an objective without a teacher, shards of another kind, a written cache."""
    if not objective.needs_teacher():
        raise InputError(f"objective {objective.kind!r} uses no teacher: there is nothing to cache")
    if index.record_kind is not objective.shards:
        raise InputError(f"objective {objective.kind!r} reads {objective.shards}; {index.folder} holds {index.kind}")
    if (out / META_NAME).exists():
        raise ExistingOutput(f"{out / META_NAME} exists: this teacher cache is already written (remove the folder "
                             "to rebuild it, or write into a fresh folder)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; it names the cache folder")


def write_cache(
    teacher: Any,
    objective: type[Objective],
    shards: str | os.PathLike[str],
    out: str | os.PathLike[str],
    window: int = DEFAULT_WINDOW,
    part_size: int = DEFAULT_PART_SIZE,
    progress: bool = True,
) -> Path:
    """Encode `objective`'s teacher roles for every usable record of `shards` with `teacher` into `out` in one
    process (every part, then the merge); returns meta.json's path. Parts left by a killed run are kept.

    `teacher` is a loaded `mimo_ds.models.teacher.Teacher` (anything with `tokenize`, `encode_tokens`,
    `fingerprint()`, `dim`, `cfg`, `device`, `tokenizer`).
    """
    index = read_index(shards)
    out = Path(out)
    check_writable(objective, index, out)
    plan = PartPlan(index.total, window, part_size)
    write_parts(teacher, objective, shards, out, plan, progress=progress)
    return merge_cache(out, plan, _teacher_identity(teacher, objective, index, window), index)


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
    not compared; nor is a prompt no role of the objective carries (the query prompt without query roles, the
    passage prompt without other roles); a cache written before the passage prompt was recorded counts as written
    without one. Returns the meta on success.
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
