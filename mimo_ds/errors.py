"""Failures a user can act on, as opposed to bugs: they end a command with one message and no traceback.

Two families. `UserError`: bad input found before (or instead of) the work — a missing or malformed file, an unknown
name, a bad value. Every `mimo-ds` command turns it into one line `error: <message>` on stderr and exit status 2
(`report_errors`); a bug (any other exception) keeps its traceback. `RunError`: an expected failure during training,
handled by the trainer across ranks. `MIMO_DEBUG=1` (or `mimo-ds --debug`) adds the traceback to a `UserError` too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

EXIT_BAD_INPUT = 2  # argparse's own status for a bad command line; Slurm scripts never requeue it
DEBUG_ENV = "MIMO_DEBUG"


class UserError(Exception):
    """Bad input the user can fix; the message names the input (file, folder, key, value) and what is wrong."""


class InputError(UserError, ValueError):
    """A value or file content that cannot be used (a ValueError too, for callers that catch those)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the command needs is not there (a FileNotFoundError too)."""


class ExistingOutput(UserError, FileExistsError):
    """An output path already holds something that would be overwritten (a FileExistsError too)."""


class RunError(RuntimeError):
    """An expected failure during training (a corpus past its bad-record ceiling, too many non-finite steps, a
    checkpoint that cannot be read): the trainer makes every rank stop together, the rank that saw it prints its
    message once, the MLflow run is marked FAILED and the process exits with status 1."""

    #: True when only this rank saw the failure (a bad shard in its slot): it alone prints the message. False when
    #: every rank raises the same error: rank 0 prints it.
    local: bool = False


class RunAborted(RunError):
    """Raised on the ranks that stop because another rank failed: they exit quietly, the failing rank speaks."""


def debugging() -> bool:
    """True when the user asked for tracebacks of user errors too (`MIMO_DEBUG=1`, set by `mimo-ds --debug`)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_errors(command: Callable[[], int | None]) -> int:
    """Run a command; a `UserError` becomes `error: <message>` on stderr and status 2 (with its traceback first
    when debugging). Anything else propagates untouched: a bug must show where it happened.

    Under a launcher (`torchrun ... -m mimo_ds.cli eval`) every rank checks the same inputs, so rank 0 alone speaks;
    the others exit 2 quietly."""
    try:
        return int(command() or 0)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":
            if debugging():
                traceback.print_exc()
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
