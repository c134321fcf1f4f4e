"""The one reader of the versioned JSON files, and the three files read through it: each error names the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mimo_ds.checkpoint import META_NAME, READABLE_FORMATS, read_meta
from mimo_ds.data.shards import INDEX_NAME, read_index
from mimo_ds.data.teacher_cache import read_cache_meta
from mimo_ds.versioned_json import read_versioned_json


def test_reader_accepts_listed_formats_and_names_the_file_otherwise(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path} not found: run the maker")):
        read_versioned_json(path, 1, "run the maker")
    path.write_text('{"format": 2, "a": [1, 2]}')
    assert read_versioned_json(path, (1, 2), "") == {"format": 2, "a": [1, 2]}
    with pytest.raises(ValueError, match=re.escape(f"{path}: format 2 is not supported (expected 3)")):
        read_versioned_json(path, 3, "")
    with pytest.raises(ValueError, match=re.escape(f"{path}: format 2 is not supported (expected 1 or 3)")):
        read_versioned_json(path, [1, 3], "")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(f"{path}: format 'list' is not supported")):
        read_versioned_json(path, 1, "")
    path.write_text('{"format": 1,')
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid JSON")):
        read_versioned_json(path, 1, "")
    path.write_bytes(b'{"format": 1, "a": "\xff"}')
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid JSON")):
        read_versioned_json(path, 1, "")


@pytest.mark.parametrize("name, read, what", [
    (INDEX_NAME, read_index, "a shard folder written by `mimo-ds shards`"),
    ("meta.json", read_cache_meta, "mimo-ds teacher-cache"),
    (META_NAME, read_meta, "is not a complete checkpoint"),
])
def test_each_file_goes_through_the_reader(tmp_path, name, read, what):
    """Missing, the file's own hint; a format nobody wrote, refused by name."""
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / name} not found: ") + ".*" + re.escape(what)):
        read(tmp_path)
    (tmp_path / name).write_text(json.dumps({"format": max(READABLE_FORMATS) + 7}))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: format {max(READABLE_FORMATS) + 7} is not")):
        read(tmp_path)


def test_a_checkpoint_meta_of_either_readable_format_reads(tmp_path: Path):
    for fmt in READABLE_FORMATS:
        (tmp_path / META_NAME).write_text(json.dumps({"format": fmt, "step": 3, "files": []}))
        assert read_meta(tmp_path)["step"] == 3
