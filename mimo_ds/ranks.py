"""One node's ranks as child processes: started as a launcher starts them, signals forwarded, one status for all.

Used by `mimo-ds train --nproc` (`mimo_ds.launch`, which says why not torch's launcher) and `mimo-ds teacher-cache
--nproc`. Each rank runs in a process group of its own with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set; SIGINT, SIGTERM and SIGUSR1 are forwarded to every rank once; when a rank fails and the others are
still running `GRACE_S` seconds later (waiting in a collective for the dead one), they are killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from mimo_ds.signals import EXIT_PREEMPTED

GRACE_S = 60.0  # the others' time to stop together after a rank failed, before they are killed
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def combined_status(statuses: list[int]) -> int:
    """The job's status from its ranks' (in the order they exited): the first failure wins, then 75, then 0."""
    failures = [code for code in statuses if code not in (0, EXIT_PREEMPTED)]
    if failures:
        return failures[0]
    return EXIT_PREEMPTED if EXIT_PREEMPTED in statuses else 0


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
