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
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mimo_ds.signals import EXIT_PREEMPTED

GRACE_S = 60.0  # the others' time to stop together after a rank failed, before they are killed
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


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


def combined_status(statuses: list[int]) -> int:
    """The job's status from its ranks' (in the order they exited): the first failure wins, then 75, then 0."""
    failures = [code for code in statuses if code not in (0, EXIT_PREEMPTED)]
    if failures:
        return failures[0]
    return EXIT_PREEMPTED if EXIT_PREEMPTED in statuses else 0


def _start(train_args: list[str], nproc: int, run_id_file: Path) -> list[subprocess.Popen]:
    from mimo_ds.tracking import RUN_ID_FILE_ENV

    return start_ranks(["-m", "mimo_ds.train", *train_args], nproc, {RUN_ID_FILE_ENV: str(run_id_file)})


def start_ranks(python_args: list[str], nproc: int, extra_env: dict[str, str]) -> list[subprocess.Popen]:
    """`python python_args` once per rank, each with the environment a launcher gives it (also `mimo-ds
    teacher-cache --nproc`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), **extra_env}
    if "DS_ACCELERATOR" not in env:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    return [subprocess.Popen([sys.executable, *python_args], process_group=0,
                             env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(nproc)]


def wait_ranks(procs: list[subprocess.Popen]) -> list[int]:
    """Every rank's status (128 + N for a rank ended by signal N) in the order they exited, forwarding signals
    meanwhile."""

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    failed_at = None
    exited: list[subprocess.Popen] = []
    try:
        while len(exited) < len(procs):
            exited += [p for p in procs if p not in exited and p.poll() is not None]
            if failed_at is None and any(_status(p.returncode) not in (0, EXIT_PREEMPTED) for p in exited):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                print(f"mimo-ds: a rank failed and the others did not stop within {GRACE_S:.0f} s: killing them",
                      file=sys.stderr, flush=True)
                _kill(procs)
            time.sleep(0.2)
    except BaseException:
        _kill(procs)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return [_status(p.returncode) for p in exited]


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the process group of every rank still running (its loader workers with it)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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
