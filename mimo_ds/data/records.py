"""Shard records (docs/data-contract.md): decoding and validation with a reason for every rejection.

What a valid record of a kind holds is the kind's declaration (`mimo_ds.record_kinds`); the checks here implement
its two languages rules once each.

The writer refuses a bad record (a converter bug must not reach a shard); the loader skips a bad record and counts it
under its reason, so the same checks serve both and a corpus never loses a record silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Collection

from mimo_ds.errors import RunError
from mimo_ds.record_kinds import ENGLISH, RecordKind, record_kind

# Reason codes, the keys of the loader's bad-record counts.
BAD_JSON = "bad_json"
INVALID_UTF8 = "invalid_utf8"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
BAD_ID = "bad_id"
KEY_MISMATCH = "key_mismatch"
EMPTY_TEXT = "empty_text"
NOT_TEXT = "not_text"
UNKNOWN_LANGUAGE = "unknown_language"
MISMATCHED_ROW = "mismatched_row"
MISSING_LANGUAGE = "missing_language"
MISSING_MEMBER = "missing_member"
TRUNCATED_SHARD = "truncated_shard"
MISSING_SHARD = "missing_shard"
UNINDEXED = "unindexed_record"
# A shard whose file differs from what the index recorded when it was written: its records are not used.
SIZE_MISMATCH = "size_mismatch"
HASH_MISMATCH = "hash_mismatch"


class DataCeilingExceeded(RunError):
    """The bad records read so far exceed `max_bad_fraction` (docs/data.md, "The bad-record ceiling").

    The message is one line naming the shards and reasons so far. Only the rank that read them knows them, so it is
    the one to speak (`local`). Constructible from the message alone, as PyTorch's worker re-raise requires.
    """

    local = True


@dataclass(frozen=True)
class BadRecord:
    """Why a record was rejected: `reason` is a code from this module (a count key), `detail` is for humans."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def check_id(record_id: Any) -> BadRecord | None:
    """Ids are shard keys: webdataset reads everything after the first dot as an extension, and '/' as a folder."""
    if not isinstance(record_id, str) or not record_id:
        return BadRecord(BAD_ID, f"id must be a non-empty string, got {record_id!r}")
    if "." in record_id or "/" in record_id or any(c.isspace() for c in record_id):
        return BadRecord(BAD_ID, f"id {record_id!r} contains a dot, a slash or whitespace")
    return None


def _check_text(value: Any, field: str) -> BadRecord | None:
    if not isinstance(value, str):
        return BadRecord(NOT_TEXT, f"{field} must be a string, got {type(value).__name__}")
    if not value.strip():
        return BadRecord(EMPTY_TEXT, f"{field} is empty")
    return None


def check_record(record: Any, kind: RecordKind | str, languages: Collection[str] | None = None) -> BadRecord | None:
    """None when `record` is a valid record of `kind` (`mimo_ds.record_kinds`), else the reason it is not.

    `languages`, if given: for a tagged kind the known codes (a record's `lang` must be one); for a parallel kind the
    codes every record must hold (the loader's selection; codes beyond it are allowed).
    """
    kind = record_kind(kind)
    if not isinstance(record, dict):
        return BadRecord(NOT_OBJECT, f"record must be a JSON object, got {type(record).__name__}")
    for field in kind.required:
        if field not in record:
            return BadRecord(MISSING_FIELD, f"{kind} record has no {field!r}")
    if bad := check_id(record["id"]):
        return bad
    return _check_parallel(record, kind, languages) if kind.parallel else _check_tagged(record, kind, languages)


def _check_tagged(record: dict[str, Any], kind: RecordKind, languages: Collection[str] | None) -> BadRecord | None:
    """One language, the record's `lang`; each text field a non-empty string."""
    lang = record["lang"]
    if not isinstance(lang, str) or not lang:
        return BadRecord(UNKNOWN_LANGUAGE, f"lang must be a non-empty string, got {lang!r}")
    if languages is not None and lang not in languages:
        return BadRecord(UNKNOWN_LANGUAGE, f"lang {lang!r} is not one of {sorted(languages)}")
    for field in kind.fields:
        if bad := _check_text(record[field], field):
            return bad
    return None


def _check_parallel(record: dict[str, Any], kind: RecordKind, languages: Collection[str] | None) -> BadRecord | None:
    """Every text field a language → text map over the same languages, English among them."""
    maps = {field: record[field] for field in kind.fields}
    if not all(isinstance(texts, dict) for texts in maps.values()):
        return BadRecord(NOT_OBJECT, f"{', '.join(kind.fields)} must be language → text objects")
    first, *others = kind.fields
    for field in others:
        if set(maps[field]) != set(maps[first]):
            only_a, only_b = sorted(set(maps[first]) - set(maps[field])), sorted(set(maps[field]) - set(maps[first]))
            return BadRecord(MISMATCHED_ROW, f"{first}-only languages {only_a}, {field}-only languages {only_b}")
    if ENGLISH not in maps[first]:
        return BadRecord(MISSING_LANGUAGE, f"{kind} record has no English side ({ENGLISH!r})")
    if languages is not None and (missing := sorted(set(languages) - set(maps[first]))):
        return BadRecord(MISSING_LANGUAGE, f"{kind} record lacks languages {missing}")
    for lang in maps[first]:
        if not isinstance(lang, str) or not lang:
            return BadRecord(UNKNOWN_LANGUAGE, f"language code {lang!r} is not a non-empty string")
        for field, texts in maps.items():
            if bad := _check_text(texts[lang], f"{field}[{lang!r}]"):
                return bad
    return None


def check_member(key: str, record: Any, kind: RecordKind | str,
                 languages: Collection[str] | None = None) -> BadRecord | None:
    """`check_record`, and the record's id must be the key it is stored under (the schedules count on it)."""
    if bad := check_record(record, kind, languages):
        return bad
    if record["id"] != key:
        return BadRecord(KEY_MISMATCH, f"id {record['id']!r} under key {key!r}")
    return None


def decode_record(data: bytes) -> tuple[dict[str, Any] | None, BadRecord | None]:
    """The record held by a shard member's bytes, or why they hold none (invalid UTF-8 is told apart from bad JSON)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, BadRecord(INVALID_UTF8, f"not UTF-8 at byte {exc.start}")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, BadRecord(BAD_JSON, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def encode_record(record: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is: smaller shards, readable with `tar -xO`)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
