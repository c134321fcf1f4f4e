"""Preemption: SIGTERM, SIGUSR1 and a first SIGINT ask the trainer to stop after the current optimizer step.

The handler only sets a flag; the training loop agrees on it collectively after each step (one rank signalled is
enough), writes a checkpoint on every rank, marks the MLflow run KILLED with the tag `mimo.resumable=true`, and the
process exits with `EXIT_PREEMPTED`. A scheduler requeues on that status and restarts with `--resume auto` (Slurm:
`slurm/`; any other: docs/training.md). A second SIGINT before that checkpoint is written aborts at once
(KeyboardInterrupt: status `EXIT_INTERRUPTED`, no checkpoint); once it is written (`checkpointed`), a second SIGINT
only says so: the run is already leaving with status 75, and cutting that short would leave MLflow RUNNING.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType, TracebackType

#: Exit status of a run that stopped for a signal after writing a checkpoint: EX_TEMPFAIL of sysexits.h,
#: "temporary failure; the user is invited to retry".
EXIT_PREEMPTED = 75
#: Exit status after a second Ctrl-C before the stop's checkpoint was written (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130

_GRACEFUL = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped for a signal at `step` after writing `checkpoint`."""

    def __init__(self, step: int, checkpoint: object) -> None:
        super().__init__(f"stopped at step {step} for a signal; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class StopRequests:
    """Installs the handlers for the duration of a `with` block (and restores the previous ones after it)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.checkpointed = False  # set once the stop's checkpoint is written: nothing is left to abort
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _graceful(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            print(f"mimo-ds: {self.signal} received: stopping after this step with a checkpoint", file=sys.stderr,
                  flush=True)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and self.checkpointed:
            print(f"mimo-ds: second {signal.Signals(signum).name}: the checkpoint is written; finishing the exit "
                  "(status 75)", file=sys.stderr, flush=True)
            return
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
        self._graceful(signum, frame)

    def __enter__(self) -> StopRequests:
        for signum in _GRACEFUL:
            self._previous[signum] = signal.signal(signum, self._graceful)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
