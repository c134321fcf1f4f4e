"""The sample audit trail: which sample ids each rank trained on at each optimizer step.

`data.audit: true` appends one JSON line per step to `<output_dir>/audit/rank<k>.jsonl`:
`{"step": S, "epoch": E, "ids": [...]}` (the ids of every micro-batch of the step on that rank). A resumed run first
drops the lines after the checkpoint's step (steps the interrupted run did after its last checkpoint are trained
again), so the union of the files over ranks holds each planned sample of an epoch exactly once: proof of what a
model saw. Each line is flushed when written, so a killed run loses at most the step it was in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from mimo_ds.jsonl import keep_until

AUDIT_DIR = "audit"


def audit_file(output_dir: Path, rank: int) -> Path:
    return output_dir / AUDIT_DIR / f"rank{rank}.jsonl"


class AuditTrail:
    """One rank's trail, continuing after `after_step` (0: a fresh run, whose old trail is emptied)."""

    def __init__(self, output_dir: Path, rank: int, after_step: int) -> None:
        self.path = audit_file(output_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep_until(self.path, after_step)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")

    def record(self, step: int, epoch: int, ids: list[str]) -> None:
        self._file.write(json.dumps({"step": step, "epoch": epoch, "ids": ids}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
