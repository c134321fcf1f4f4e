"""Engine checkpoints: saving, retention, finding the newest complete one, and restoring a run from it.

One object, `CheckpointManager`, owns `<output_dir>/checkpoints/`; the trainer asks it whether a step is due, hands
it what each rank must keep, and asks it to restore; it knows nothing else of training.

A checkpoint is one folder, `checkpoints/step_<S>/`, holding
- DeepSpeed's own partitioned engine state (`engine.save_checkpoint`: the student and P, the optimizer with its fp32
  masters, the learning-rate schedule), one file per rank for ZeRO's partitions;
- `rank<k>.pt` per rank: that rank's RNG states (torch CPU/CUDA, Python, NumPy) and its loader's exact-resume state,
  saved as tensors and plain values only, so it loads with `weights_only=True`;
- `student_config/`: the encoder's config and tokenizer, so `mimo-ds export` needs nothing but this folder;
- `run_config.json`: the run config it was made with;
- `meta.json`, written last: the step, the MLflow run id, the run's identity (what a resume must match, given by
  `mimo_ds.run_dir.run_identity`) and the manifest: every file's size, and the sha256 of every file up to 4 MiB.
It is written under a temporary name (`.tmp-step_<S>`) and renamed only after every rank has finished writing; only
then are checkpoints beyond the newest `keep` deleted. A folder is *complete* when its name is `step_<S>`, its
meta.json reads, and every file of its manifest exists with that size and checksum: `--resume auto` never takes
anything else (format-1 checkpoints, from before the manifest had sizes, are checked for presence only).

DeepSpeed unpickles its own files with `weights_only=False` (on resume and in `zero_to_fp32`); `check_loadable` loads
each of them first with `weights_only=True`, so a file carrying anything but tensors and DeepSpeed's bookkeeping is
refused by name before DeepSpeed touches it.
"""

from __future__ import annotations

import errno
import json
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from mimo_ds.distributed import agree_any, first_rank
from mimo_ds.errors import RunAborted, RunError
from mimo_ds.hashing import file_sha256
from mimo_ds.versioned_json import read_versioned_json

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

CHECKPOINTS_DIR = "checkpoints"
META_NAME = "meta.json"
RUN_CONFIG_NAME = "run_config.json"
SPEC_DIR = "student_config"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: `files` lists names only
HASHED_UP_TO = 4 << 20  # files up to this size get a sha256 in the manifest; larger ones only their size
LOW_SPACE = 64 << 20  # below this much free space, a failed write of torch's is taken for a full disk
TMP_PREFIX = ".tmp-"
_STEP_NAME = re.compile(r"^step_(\d+)$")


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that loads only by unpickling objects other than tensors: refused, never skipped over."""


class OutOfSpace(RunError):
    """Too little free space for the next checkpoint, even after deleting what `keep` allows: the run stops, and
    `checkpoint` (the newest complete one) is where `--resume auto` continues once space is freed."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def _deepspeed_globals() -> list[type]:
    """The classes DeepSpeed pickles into its checkpoints beside tensors (seen in ZeRO-2/3 fp32/bf16/fp16 states):
    plain bookkeeping objects whose unpickling runs no code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def step_name(step: int) -> str:
    return f"step_{step}"


# -- finding ------------------------------------------------------------------------------------------------------------
def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, checked for format; errors name the file."""
    return read_versioned_json(folder / META_NAME, READABLE_FORMATS,
                               f"{folder} is not a complete checkpoint (an interrupted save?)")


def manifest(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Every file's size, and its sha256 when it is small (the JSON files, tokenizer files, the rank files): what
    `check_complete` compares against. Cheap on purpose: the large engine files are only measured, never hashed."""
    entries = {}
    for name in names:
        path = folder / name
        size = path.stat().st_size
        entries[name] = {"size": size, **({"sha256": file_sha256(path)} if size <= HASHED_UP_TO else {})}
    return entries


def check_complete(folder: Path) -> dict[str, Any]:
    """The meta of a complete checkpoint: every file of its manifest present, of the recorded size and, where one is
    recorded, checksum. Otherwise an error naming the first file that is wrong (FileNotFoundError: missing)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} does not exist")
    if not _STEP_NAME.match(folder.name):
        raise ValueError(f"{folder} is not a checkpoint folder (expected a name step_<S>; a .tmp- one is unfinished)")
    meta = read_meta(folder)
    files = meta["files"]
    if missing := [name for name in files if not (folder / name).is_file()]:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if isinstance(files, dict):  # format 2: sizes and small files' checksums (format 1 listed names only)
        for name, entry in files.items():
            path = folder / name
            if (size := path.stat().st_size) != entry["size"]:
                raise ValueError(f"checkpoint file {path} is {size} bytes, its manifest says {entry['size']} "
                                 "(truncated or rewritten)")
            if "sha256" in entry and file_sha256(path) != entry["sha256"]:
                raise ValueError(f"checkpoint file {path} does not match the checksum in its manifest (altered)")
    return meta


def check_loadable(folder: Path) -> None:
    """Every engine and rank file of a checkpoint loads as tensors and plain values (`weights_only=True`), with only
    DeepSpeed's own bookkeeping classes allowed. DeepSpeed itself unpickles its files with `weights_only=False`
    (resume and `zero_to_fp32`), so this check comes first: a file carrying any other object (code a pickle would
    run) is refused before anything unpickles it. Memory-mapped: no tensor data is read."""
    for path in sorted(folder.glob("*.pt")):
        try:
            with torch.serialization.safe_globals(_deepspeed_globals()):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise UnsafeCheckpoint(f"checkpoint file {path} is refused: it holds objects other than tensors and "
                                   f"DeepSpeed's own state ({reason}); mimo-ds never unpickles those") from exc
        except Exception as exc:  # a truncated or foreign file: torch's zip reader says which way
            raise ValueError(f"checkpoint file {path} cannot be read: {str(exc).splitlines()[0]}") from exc


def verify(folder: Path) -> dict[str, Any]:
    """`check_complete` and `check_loadable`: what `--resume <folder>` and `mimo-ds export` ask of a checkpoint."""
    meta = check_complete(folder)
    check_loadable(folder)
    return meta


def step_folders(output_dir: Path) -> list[Path]:
    """Every `step_<S>` folder under `output_dir`, complete or not, oldest step first."""
    root = output_dir / CHECKPOINTS_DIR
    found = [f for f in root.iterdir() if _STEP_NAME.match(f.name)] if root.is_dir() else []
    return sorted(found, key=lambda f: int(_STEP_NAME.match(f.name).group(1)))  # type: ignore[union-attr]


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Every complete checkpoint under `output_dir`, oldest step first."""
    return [folder for folder in step_folders(output_dir) if _broken(folder) is None]


def _broken(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    try:
        check_complete(folder)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def resolve_resume(resume: str | Path, output_dir: Path,
                   skipped: Callable[[Path, str], None] | None = None) -> Path | None:
    """`never` → None; `auto` → the newest usable checkpoint under output_dir, or None; a folder → that folder, which
    must be complete and loadable (errors name the file).

    `auto` passes over newer folders that are broken (a file missing, truncated or unreadable), handing each with its
    reason to `skipped` (preflight names it and deletes it). A file that loads but holds foreign objects is not
    "broken": it ends the resume with `UnsafeCheckpoint` instead of being passed over."""
    if resume == "never":
        return None
    if resume != "auto":
        folder = Path(resume)
        verify(folder)
        return folder
    for folder in reversed(step_folders(output_dir)):
        if (why := _broken(folder)) is None:
            try:
                check_loadable(folder)
            except UnsafeCheckpoint:
                raise
            except ValueError as exc:
                why = str(exc)
            else:
                return folder
        if skipped is not None:
            skipped(folder, why)
    return None


# -- one rank's own state ----------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's random generators as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Restored:
    """What a resumed run continues from."""

    folder: Path
    step: int
    run_id: str | None
    loader_state: dict[str, Any]
    rng: dict[str, Any]


# -- the manager ---------------------------------------------------------------------------------------------------------
class CheckpointManager:
    """Saves every `every_steps` steps (and when asked), keeps the newest `keep`, restores from one.

    `save` and `load_engine` are collective: every rank calls them at the same step.
    """

    def __init__(self, output_dir: Path, every_steps: int | None, keep: int, rank: int, world: int) -> None:
        self.root = output_dir / CHECKPOINTS_DIR
        self.every_steps, self.keep = every_steps, keep
        self.rank, self.world = rank, world

    def due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0  # type: ignore[operator]

    def save(self, engine: DeepSpeedEngine, step: int, *, loader_state: dict[str, Any], meta: dict[str, Any],
             run_config: dict[str, Any], write_spec: Callable[[Path], None]) -> Path:
        """Write `step_<step>` and return it (on every rank); `meta` must hold the run's identity and id.

        Raises `OutOfSpace` (every rank) when the last checkpoint's size is not free even after `_make_room`, and
        RunError from the rank that failed to write (the others RunAborted) when a write fails part-way."""
        final = self.root / step_name(step)
        tmp = self.root / (TMP_PREFIX + final.name)
        self._make_room(engine.device)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a save of this step that died half-way
        _barrier()
        started = time.perf_counter()
        failure = None
        try:
            engine.save_checkpoint(str(self.root), tag=tmp.name, client_state={"step": step}, save_latest=False)
            torch.save({"rng": capture_rng(), "loader": loader_state}, tmp / rank_file(self.rank))
        except (OSError, RuntimeError) as exc:
            failure = _write_failure(exc, tmp)
        _raise_together(failure, engine.device)
        if self.rank == 0:
            try:
                write_spec(tmp / SPEC_DIR)
                (tmp / RUN_CONFIG_NAME).write_text(json.dumps(run_config, indent=1, default=str))
                names = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()}
                names |= {rank_file(r) for r in range(self.world)}  # every rank's: missing from view is an error
                full_meta = {"format": FORMAT, **meta, "step": step, "files": manifest(tmp, sorted(names)),
                             "save_seconds": round(time.perf_counter() - started, 3)}
                _write_json_atomically(tmp / META_NAME, full_meta)  # last: the manifest makes the folder complete
                shutil.rmtree(final, ignore_errors=True)  # a complete one of the same step (a re-run after a resume)
                tmp.rename(final)
                self._prune(self.keep)
            except OSError as exc:
                failure = _write_failure(exc, tmp)
        _raise_together(failure, engine.device)
        return final

    def _make_room(self, device: torch.device) -> None:
        """Collective, before a save: the next checkpoint needs about the newest complete one's size. When that is not
        free, delete down to `keep - 1` complete checkpoints (never the newest: it is the run's way back) and the
        broken and unfinished ones; when it is still not free, stop the run (`OutOfSpace`) rather than fill the disk
        half-way through a write."""
        complete = complete_checkpoints(self.root.parent)
        if not complete:
            return
        needed = checkpoint_bytes(complete[-1])
        if not agree_any([self._free() < needed], device)[0]:
            return
        if self.rank == 0:
            self._prune(max(1, self.keep - 1))
        _barrier()
        free = self._free()
        if agree_any([free < needed], device)[0]:
            newest = complete_checkpoints(self.root.parent)[-1]
            raise OutOfSpace(f"not enough space for the next checkpoint in {self.root}: it needs {needed} bytes "
                             f"(the size of the last one), {free} are free after deleting what checkpoint.keep allows;"
                             f" free space, then continue from {newest.name} with --resume auto", newest)

    def _free(self) -> int:
        return shutil.disk_usage(self.root).free

    def _prune(self, keep: int) -> None:
        """Delete complete checkpoints beyond the newest `keep` (≥ 1), broken `step_<S>` folders and unfinished saves.
        Rank 0 only, outside any save in progress."""
        complete = complete_checkpoints(self.root.parent)
        doomed = complete[: max(0, len(complete) - max(1, keep))]
        doomed += [f for f in step_folders(self.root.parent) if f not in complete]
        doomed += list(self.root.glob(TMP_PREFIX + "*"))
        for folder in doomed:
            shutil.rmtree(folder, ignore_errors=True)

    def read_own(self, folder: Path) -> Restored:
        """This rank's share of a complete checkpoint (local: the trainer agrees on it before loading the engine)."""
        meta = check_complete(folder)  # preflight verified it; this rank re-checks what it is about to read
        path = folder / rank_file(self.rank)
        try:
            own = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: name it
            raise RunError(f"checkpoint file {path} cannot be read: {exc}") from exc
        return Restored(folder, int(meta["step"]), meta.get("run_id"), own["loader"], own["rng"])

    def load_engine(self, engine: DeepSpeedEngine, restored: Restored) -> None:
        """Collective: DeepSpeed's engine state (weights, optimizer, schedule), then this rank's RNG states."""
        loaded, _ = engine.load_checkpoint(str(restored.folder.parent), tag=restored.folder.name,
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise RunError(f"DeepSpeed found no engine state in {restored.folder}")
        restore_rng(restored.rng)


def checkpoint_bytes(folder: Path) -> int:
    """The bytes a complete checkpoint takes (its manifest's sizes; a format-1 one is measured on disk)."""
    files = read_meta(folder)["files"]
    if isinstance(files, dict):
        return sum(int(entry["size"]) for entry in files.values())
    return sum((folder / name).stat().st_size for name in files)


def _write_failure(exc: BaseException, path: Path) -> RunError:
    """The one message a failed checkpoint write ends the run with; a full disk is called one (torch's writer reports
    it as `basic_ios::clear: iostream error` or `file write failed`, not as ENOSPC)."""
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = -1
    text = str(exc)
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text or (
        ("iostream error" in text or "file write failed" in text) and 0 <= free < LOW_SPACE)
    if full:
        error = RunError(f"no space left on device writing checkpoint {path} ({free} bytes free there): free space, "
                         "then continue from the newest complete checkpoint with --resume auto")
    else:
        error = RunError(f"writing checkpoint {path} failed: {text.splitlines()[0] if text else type(exc).__name__}")
    error.local = True
    return error


def _raise_together(failure: RunError | None, device: torch.device) -> None:
    """Collective: when any rank failed, the lowest failing rank raises its error and the others RunAborted."""
    reporter = first_rank(failure is not None, device)
    if reporter is None:
        return
    if failure is not None and (not dist.is_initialized() or dist.get_rank() == reporter):
        raise failure
    raise RunAborted(f"rank {reporter} failed to write the checkpoint")


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
