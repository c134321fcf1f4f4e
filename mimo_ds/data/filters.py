"""Stage-1 pair filters from the paper (prepare_stage1_parallel.py), each configurable, with a report of every drop.

Before any filter, a pair or row with a control character in a text (NUL and the other C0 controls but tab, line
feed and carriage return; DEL) is dropped as `control_characters`: such bytes are damage, not language.
Order of the checks for a pair (x in ℓ, e in English), in corpus order: held-out English → both sides within
[min_chars, max_chars] → length ratio ≤ max_ratio → English already kept (first-seen dedup: "global" over all
languages as in the paper, "per_language" for corpora such as gettext catalogues where every language translates
the same English, or "off") → ℓ at its cap.
A pair dropped for the cap does not mark its English as seen, so another language may still keep it. en→en identity
pairs are the first `identity_pairs` distinct kept English sentences. The kept pairs are shuffled with the seed and numbered
in that order, so id order = write order (what the language schedules count positions in).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, NamedTuple

from mimo_ds.data.splits import is_heldout

HELDOUT = "heldout"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LENGTH_RATIO = "length_ratio"
DUPLICATE_ENGLISH = "duplicate_english"
LANGUAGE_CAP = "language_cap"
CONTROL_CHARACTERS = "control_characters"
DEDUP_MODES = ("global", "per_language", "off")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(*texts: str) -> bool:
    return any(_CONTROL.search(text) for text in texts)


class RawPair(NamedTuple):
    """A parallel pair as a converter reads it, before filtering."""

    lang: str
    en: str
    text: str
    source: str | None = None


@dataclass
class Stage1Filters:
    """The paper's defaults; None switches a filter off."""

    min_chars: int | None = 10
    max_chars: int | None = 512
    max_ratio: float | None = 3.0
    dedup_english: str = "global"
    cap_per_language: int | None = 500_000
    identity_pairs: int | None = 500_000
    exclude_heldout: bool = False
    seed: int | None = 42


class FilterReport:
    """Kept and dropped counts per language and reason; `read_errors` for lines a reader could not use."""

    def __init__(self) -> None:
        self.kept: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)
        self.read_errors: dict[str, Counter[str]] = defaultdict(Counter)
        self.rows: Counter[str] = Counter()  # stage-2 rows: "kept" and drop reasons, counted once per row
        self.notes: list[str] = []

    def drop(self, lang: str, reason: str) -> None:
        self.dropped[lang][reason] += 1

    def read_error(self, where: str, reason: str) -> None:
        self.read_errors[where][reason] += 1

    def as_dict(self, settings: Any = None) -> dict[str, Any]:
        langs = sorted(set(self.kept) | set(self.dropped))
        return {
            "settings": asdict(settings) if settings is not None else None,
            "languages": {
                lang: {"kept": self.kept[lang], "dropped": dict(sorted(self.dropped[lang].items()))} for lang in langs
            },
            "kept": sum(self.kept.values()),
            "dropped": sum(sum(c.values()) for c in self.dropped.values()),
            "read_errors": {k: dict(v) for k, v in sorted(self.read_errors.items())},
            **({"rows": dict(sorted(self.rows.items()))} if self.rows else {}),
            "notes": self.notes,
        }


def _length_reason(text: str, filters: Stage1Filters) -> str | None:
    if filters.min_chars is not None and len(text) < filters.min_chars:
        return TOO_SHORT
    if filters.max_chars is not None and len(text) > filters.max_chars:
        return TOO_LONG
    return None


def filter_pairs(
    pairs: Iterable[RawPair], filters: Stage1Filters, report: FilterReport, id_prefix: str
) -> list[dict[str, Any]]:
    """Apply the stage-1 filters to `pairs` (in corpus order) and return shuffled, numbered pair records.

    Every pair read lands in `report`: kept under its language, or dropped under its language and reason.
    """
    if filters.dedup_english not in DEDUP_MODES:
        raise ValueError(f"dedup_english must be one of {DEDUP_MODES}, got {filters.dedup_english!r}")
    seen: set[tuple[str, str]] = set()
    kept: list[RawPair] = []
    identity: list[RawPair] = []
    identity_seen: set[str] = set()
    for pair in pairs:
        lang, en, text = pair.lang, pair.en.strip(), pair.text.strip()
        if has_control_characters(en, text):
            report.drop(lang, CONTROL_CHARACTERS)
            continue
        if filters.exclude_heldout and is_heldout(en):
            report.drop(lang, HELDOUT)
            continue
        reason = _length_reason(en, filters) or _length_reason(text, filters)
        if reason is None and filters.max_ratio is not None:
            short, long_ = sorted((len(en), len(text)))
            if long_ > filters.max_ratio * max(short, 1):
                reason = LENGTH_RATIO
        dedup_key = (lang if filters.dedup_english == "per_language" else "", en)
        if reason is None and filters.dedup_english != "off" and dedup_key in seen:
            reason = DUPLICATE_ENGLISH
        if reason is None and filters.cap_per_language is not None and report.kept[lang] >= filters.cap_per_language:
            reason = LANGUAGE_CAP
        if reason is not None:
            report.drop(lang, reason)
            continue
        seen.add(dedup_key)
        report.kept[lang] += 1
        kept.append(RawPair(lang, en, text, pair.source))
        if lang != "en" and en not in identity_seen:
            if filters.identity_pairs is None or len(identity) < filters.identity_pairs:
                identity_seen.add(en)
                identity.append(RawPair("en", en, en, pair.source))
    for pair in identity:
        report.kept["en"] += 1
    kept.extend(identity)
    if filters.seed is not None:
        random.Random(filters.seed).shuffle(kept)
    width = max(6, len(str(len(kept))))
    records = []
    for i, p in enumerate(kept):
        record = {"id": f"{id_prefix}-{i:0{width}d}", "lang": p.lang, "text": p.text, "en": p.en}
        if p.source:
            record["source"] = p.source
        records.append(record)
    return records


class RawRow(NamedTuple):
    """A stage-2 row as a converter reads it: `key` becomes the id suffix; texts by language code."""

    key: str
    query: dict[str, str]
    passage: dict[str, str]


def _safe_key(key: str) -> str:
    """Ids are shard keys: no dots, slashes or whitespace (webdataset would split on them)."""
    return "".join("_" if c in "./" or c.isspace() else c for c in key)


def _has_text(texts: dict[str, Any], lang: str) -> bool:
    value = texts.get(lang)
    return isinstance(value, str) and bool(value.strip())


def filter_rows(
    rows: Iterable[RawRow], languages: Iterable[str], report: FilterReport, id_prefix: str,
    exclude_heldout: bool = False, seed: int | None = 42,
) -> list[dict[str, Any]]:
    """Rows parallel over `languages` (English included), each text non-empty; held-out rows (by the English
    passage) dropped when asked. Every row read is kept or dropped in `report`, under each of its languages."""
    langs = sorted(set(languages) | {"en"})
    kept: list[dict[str, Any]] = []
    ids: set[str] = set()
    for row in rows:
        reason = None
        if not all(_has_text(row.query, l) and _has_text(row.passage, l) for l in langs):
            reason = "missing_or_empty_text"
        elif has_control_characters(*(row.query[l] for l in langs), *(row.passage[l] for l in langs)):
            reason = CONTROL_CHARACTERS
        elif exclude_heldout and is_heldout(row.passage["en"]):
            reason = HELDOUT
        rid = f"{id_prefix}-{_safe_key(row.key)}"
        if reason is None and rid in ids:
            reason = "duplicate_id"
        if reason is not None:
            report.rows[reason] += 1
            for lang in langs:
                report.drop(lang, reason)
            continue
        report.rows["kept"] += 1
        ids.add(rid)
        for lang in langs:
            report.kept[lang] += 1
        kept.append({
            "id": rid,
            "query": {l: row.query[l].strip() for l in langs},
            "passage": {l: row.passage[l].strip() for l in langs},
        })
    if seed is not None:
        random.Random(seed).shuffle(kept)
    return kept
