"""`mimo-ds train --nproc N`: the N ranks of one node, started the way `srun` starts them (slurm/).

Why not torch's launcher: it reports any failing rank as its own status 1, so a clean preemption (every rank
checkpointed and exited 75) looked like a failure and a requeue-on-75 wrapper would not requeue; and every rank ran
the config checks, so one bad key was printed N times before a launcher traceback. Here:
- the checks (`mimo_ds.train.preflight`, for world size N) run once, in this process: a refusal is one message and
  status 2, and no rank starts;
- one process per rank with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, each in a process group of
  its own, so SIGINT, SIGTERM and SIGUSR1 reach every rank exactly once: forwarded from this process (a Ctrl-C in the
  terminal reaches only this process; the trainer's second-Ctrl-C rule still holds);
- the status is the trainer's own: the status of the rank that failed first (anything but 0 and 75: a rank killed
  by `kill -9` gives 137, not the 1 of the ranks that lost it), else 75 when a rank stopped for a signal, else 0;
- when a rank fails and the others are still running `GRACE_S` seconds later (a rank killed hard leaves the others
  waiting in a collective), they are killed, and an MLflow run left RUNNING is marked FAILED.
Starting, signal forwarding, waiting and the combined status are `mimo_ds.ranks` (`mimo-ds teacher-cache --nproc`
uses them too); the checks and the MLflow clean-up are the trainer's, here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mimo_ds.ranks import combined_status, start_ranks, wait_ranks
from mimo_ds.signals import EXIT_PREEMPTED


def launch(train_args: list[str], nproc: int) -> int:
    """Check once, start `nproc` ranks of `python -m mimo_ds.train train_args`, return the trainer's status."""
    from mimo_ds.train import checked, parse_args

    if nproc < 1:
        print(f"error: --nproc must be a positive number of processes, got {nproc}", file=sys.stderr)
        return 2
    if checked(parse_args(train_args), world=nproc) is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="mimo-launch-") as tmp:
        run_id_file = Path(tmp) / "run.json"
        procs = _start(train_args, nproc, run_id_file)
        statuses = wait_ranks(procs)
        status = combined_status(statuses)
        if status not in (0, EXIT_PREEMPTED):
            _close_tracking(run_id_file)
    return status


def _start(train_args: list[str], nproc: int, run_id_file: Path) -> list[subprocess.Popen]:
    from mimo_ds.tracking import RUN_ID_FILE_ENV
    from mimo_ds.train import CHECKED_BY_LAUNCHER_ENV

    return start_ranks(["-m", "mimo_ds.train", *train_args], nproc,
                       {RUN_ID_FILE_ENV: str(run_id_file), CHECKED_BY_LAUNCHER_ENV: "1"})


def _close_tracking(run_id_file: Path) -> None:
    """The ranks failed: an MLflow run rank 0 could not close (killed, or killed waiting for a dead peer) → FAILED."""
    if not run_id_file.is_file():
        return
    from mimo_ds.tracking import fail_if_running

    recorded = json.loads(run_id_file.read_text())
    try:
        if fail_if_running(recorded["run_id"], recorded["tracking_uri"]):
            print(f"mimo-ds: MLflow run {recorded['run_id']} was left RUNNING by its ranks: marked FAILED",
                  file=sys.stderr)
    except Exception as exc:  # the store itself is gone: say so, keep the ranks' status
        print(f"mimo-ds: could not close MLflow run {recorded['run_id']}: {exc}", file=sys.stderr)
