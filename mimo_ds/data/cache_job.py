"""One rank of `mimo-ds teacher-cache`: who it is, its device, its parts, the wait for the others, rank 0's merge.

Started by torchrun, deepspeed, `mimo-ds teacher-cache --nproc N` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) or a plain srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; srun sets the step's task count,
the batch script itself does not, so the batch shell of a multi-task job is still a world of one). Ranks share
nothing while they encode; the only collective is one gloo barrier at the end (gloo on GPU nodes too: it needs no
device, and a rank that dies closes its connections, so the others stop at once instead of waiting out a timeout),
after which rank 0 checks and merges every part.

A rank stopped by SIGTERM, SIGUSR1 (Slurm's warning before the time limit) or Ctrl-C exits 75 (`EXIT_PREEMPTED`):
the part it was writing is dropped, every finished part is kept, and the same command run again continues.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from mimo_ds.data.cache_parts import PartPlan
from mimo_ds.errors import InputError
from mimo_ds.signals import EXIT_PREEMPTED

#: How long rank 0 waits at the barrier for the slowest rank: a resumed job's ranks can differ by hours of work.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local: int


def this_rank() -> Rank:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return Rank(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", "0")))
    return Rank(0, 1, 0)


def rank_device(requested: str | None, me: Rank) -> str:
    """`cuda` (asked for, or the default where there is one) means this rank's own GPU, `cuda:LOCAL_RANK`."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and me.world > 1:
        if me.local >= torch.cuda.device_count():
            raise InputError(f"local rank {me.local} has no GPU of its own ({torch.cuda.device_count()} on this node)")
        return f"cuda:{me.local}"
    return device


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def run_rank(cfg: Any, objective: Any, out: Path, plan: PartPlan, identity: dict[str, Any], me: Rank,
             device: str, progress: bool = True) -> int:
    """Write this rank's unfinished parts; rank 0 then merges. Returns the exit status (0, 1, or 75 for a signal)."""
    import torch
    import torch.distributed as dist

    from mimo_ds.data.cache_parts import finished_parts
    from mimo_ds.data.shards import read_index
    from mimo_ds.data.teacher_cache import merge_cache, write_parts
    from mimo_ds.models.teacher import Teacher

    if me.world > 1 and not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
        raise InputError(f"rank {me.rank} of {me.world}: MASTER_ADDR and MASTER_PORT are not set (torchrun, "
                         "`--nproc` and slurm/teacher_cache.sh set them)")
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        if me.world > 1:
            dist.init_process_group("gloo", rank=me.rank, world_size=me.world, timeout=BARRIER_TIMEOUT)
        mine = plan.rank_parts(me.rank, me.world)
        done = finished_parts(out, plan, identity)
        if any(part not in done for part in mine):
            torch.manual_seed(cfg.seed)
            teacher = Teacher.load(cfg.teacher, device)
            write_parts(teacher, objective, cfg.data.train, out, plan, me.rank, me.world, progress)
        elif mine:
            print(f"teacher cache rank {me.rank}: its {len(mine)} part(s) finished earlier; nothing to encode",
                  flush=True)
        if me.world > 1:
            try:
                dist.barrier()
            except RuntimeError as exc:
                print(f"error: teacher cache rank {me.rank}: another rank stopped before its parts were written (its "
                      f"own log says why): {str(exc).splitlines()[0]}; the finished parts are kept: run the same "
                      "command again to continue", file=sys.stderr)
                return 1
        if me.rank == 0:
            began = time.perf_counter()
            meta_path = merge_cache(out, plan, identity, read_index(cfg.data.train))
            _merged(meta_path, out, time.perf_counter() - began)
        return 0
    except _Stopped as exc:
        print(f"teacher cache rank {me.rank}: stopped for {exc}; the finished parts under {out} are kept: run the same "
              "command again to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if me.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _merged(meta_path: Path, out: Path, seconds: float) -> None:
    import json

    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    tokens = meta["tokens"]
    padding = f"{tokens['real'] / tokens['computed']:.1%}" if tokens.get("computed") else "n/a"
    print(f"{meta_path}: {meta['count']} {meta['kind']} rows × {meta['dim']} ({', '.join(meta['roles'])}), "
          f"skipped {meta['skipped'] or 'none'}, padding efficiency {padding} (real/computed tokens), merged in "
          f"{seconds:.1f} s; use it with --set data.teacher_cache={out}", flush=True)
