"""Failures a user can act on, as opposed to bugs: they end a run with one message and no traceback."""


class RunError(RuntimeError):
    """An expected failure during training (a corpus past its bad-record ceiling, too many non-finite steps, a
    checkpoint that cannot be read): the trainer makes every rank stop together, the rank that saw it prints its
    message once, the MLflow run is marked FAILED and the process exits with status 1."""

    #: True when only this rank saw the failure (a bad shard in its slot): it alone prints the message. False when
    #: every rank raises the same error: rank 0 prints it.
    local: bool = False


class RunAborted(RunError):
    """Raised on the ranks that stop because another rank failed: they exit quietly, the failing rank speaks."""
