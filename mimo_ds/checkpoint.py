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
- `meta.json`, written last: the step, the MLflow run id, what a resume must match (world size, loader workers,
  batch, shards, seed, objective) and the list of every file the checkpoint consists of.
It is written under a temporary name (`.tmp-step_<S>`) and renamed only after every rank has finished writing; only
then are checkpoints beyond the newest `keep` deleted. A folder is *complete* when its name is `step_<S>`, its
meta.json reads, and every file it lists exists: `--resume auto` never takes anything else. DeepSpeed's files are
unpickled by DeepSpeed when a run resumes: resume only from checkpoints you made.
"""

from __future__ import annotations

import json
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

from mimo_ds.errors import RunError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

CHECKPOINTS_DIR = "checkpoints"
META_NAME = "meta.json"
RUN_CONFIG_NAME = "run_config.json"
SPEC_DIR = "student_config"
FORMAT = 1
TMP_PREFIX = ".tmp-"
_STEP_NAME = re.compile(r"^step_(\d+)$")
#: What a resume must match exactly: ZeRO's partitions and the loader's slot plan depend on them.
IDENTITY_KEYS = ("world_size", "num_workers", "per_device", "grad_accum", "shards", "seed", "objective")


def rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def step_name(step: int) -> str:
    return f"step_{step}"


# -- finding ------------------------------------------------------------------------------------------------------------
def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, checked for format; errors name the file."""
    path = folder / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: {META_NAME} is missing (an interrupted save?)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format') if isinstance(meta, dict) else None!r} "
                         f"is not {FORMAT}")
    return meta


def check_complete(folder: Path) -> dict[str, Any]:
    """The meta of a complete checkpoint; otherwise an error naming what is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} does not exist")
    if not _STEP_NAME.match(folder.name):
        raise ValueError(f"{folder} is not a checkpoint folder (expected a name step_<S>; a .tmp- one is unfinished)")
    meta = read_meta(folder)
    if missing := [name for name in meta["files"] if not (folder / name).exists()]:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return meta


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Every complete checkpoint under `output_dir`, oldest step first."""
    root = output_dir / CHECKPOINTS_DIR
    found = []
    for folder in root.iterdir() if root.is_dir() else ():
        if not _STEP_NAME.match(folder.name):
            continue
        try:
            check_complete(folder)
        except (OSError, ValueError):
            continue
        found.append(folder)
    return sorted(found, key=lambda f: int(_STEP_NAME.match(f.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(resume: str | Path, output_dir: Path) -> Path | None:
    """`never` → None; `auto` → the newest complete checkpoint under output_dir, or None; a folder → that folder,
    which must be a complete checkpoint."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    folder = Path(resume)
    check_complete(folder)
    return folder


def identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, now Y` for every identity key that differs."""
    return [f"{key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r}" for key in IDENTITY_KEYS
            if saved.get(key) != now.get(key)]


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
        """Write `step_<step>` and return it (on every rank); `meta` must hold the identity keys and the run id."""
        final = self.root / step_name(step)
        tag = TMP_PREFIX + final.name
        tmp = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a save of this step that died half-way
        _barrier()
        started = time.perf_counter()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"step": step}, save_latest=False)
        torch.save({"rng": capture_rng(), "loader": loader_state}, tmp / rank_file(self.rank))
        _barrier()
        if self.rank == 0:
            write_spec(tmp / SPEC_DIR)
            (tmp / RUN_CONFIG_NAME).write_text(json.dumps(run_config, indent=1, default=str))
            seen = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()}
            files = sorted(seen | {rank_file(r) for r in range(self.world)})  # every rank's, seen yet or not
            full_meta = {"format": FORMAT, **meta, "step": step, "files": files,
                         "save_seconds": round(time.perf_counter() - started, 3)}
            _write_json_atomically(tmp / META_NAME, full_meta)
            shutil.rmtree(final, ignore_errors=True)  # a complete one of the same step (a re-run after a resume)
            tmp.rename(final)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        """Delete complete checkpoints beyond the newest `keep`, and unfinished saves of earlier steps."""
        complete = complete_checkpoints(self.root.parent)
        for folder in complete[: max(0, len(complete) - self.keep)]:
            shutil.rmtree(folder, ignore_errors=True)
        for folder in self.root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(folder, ignore_errors=True)

    def read_own(self, folder: Path) -> Restored:
        """This rank's share of a complete checkpoint (local: the trainer agrees on it before loading the engine)."""
        meta = check_complete(folder)
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


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
