"""The sha256 of a file, the one way every part of mimo-ds fingerprints a file it wrote or must trust (shards,
checkpoint files, the GPU bundle's models). A leaf: it imports nothing from mimo_ds, so any layer can use it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB chunks so memory stays flat whatever the file's size
    (shards and model weights run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
