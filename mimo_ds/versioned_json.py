"""Reading the small versioned JSON files mimo-ds writes (shard index, teacher-cache meta, checkpoint meta).

A leaf: `data/` and `checkpoint` both read through it, so the three files fail with the same messages, each naming
the file, and a reader can use it without importing anything above it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any


def read_versioned_json(path: Path, formats: int | Collection[int], missing_hint: str) -> dict[str, Any]:
    """Parse `path` and check its `format` is one of `formats`; every error names the file (and, when it is missing,
    `missing_hint` says what makes it)."""
    accepted = (formats,) if isinstance(formats, int) else tuple(formats)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {missing_hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") not in accepted:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: format {found!r} is not supported "
                         f"(expected {' or '.join(map(str, accepted))})")
    return raw
