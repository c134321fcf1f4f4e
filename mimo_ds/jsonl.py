"""One JSON object per line per optimizer step (`metrics.jsonl`, the audit trail): appended as training goes, cut
back to a checkpoint's step when a run resumes from it, so a step trained twice is recorded once."""

from __future__ import annotations

import json
from pathlib import Path


def step_of(line: str) -> int | None:
    """A line's `step`; None for a line torn by a kill in the middle of writing it (only ever the last one)."""
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def keep_until(path: Path, step: int) -> None:
    """Drop the lines of `path` after `step` (all of them for step 0; nothing when the file does not exist)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if (s := step_of(line)) is not None and s <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
