"""What makes two teachers' embeddings interchangeable, read from the config alone.

A leaf module: the teacher records its fingerprint in a stage output, the teacher cache records it when written and
checks a run against it, and neither has to import the other.
"""

from __future__ import annotations

from typing import Any

#: The fingerprint keys a teacher cache is checked on. `query_prompt` only matters to caches with query
#: roles, `passage_prompt` only to caches with other roles; a cache written before `passage_prompt` existed used "".
CHECKED_KEYS = ("path", "pooling", "normalize", "query_prompt", "passage_prompt", "max_length", "dim")


def fingerprint_of(cfg: Any, dim: int | None) -> dict[str, object]:
    """`cfg` is a `TeacherConfig`; `dim` None where it is unknown (a run that has not loaded its teacher)."""
    return {
        "path": cfg.path,
        "pooling": cfg.pooling,
        "normalize": cfg.normalize,
        "query_prompt": cfg.query_prompt,
        "passage_prompt": cfg.passage_prompt,
        "max_length": cfg.max_length,
        "dim": dim,
    }
