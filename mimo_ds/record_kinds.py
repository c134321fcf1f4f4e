"""The shard record kinds: ONE typed declaration of each, which every part that touches records reads.

Readers: the shard writer and the validation (`mimo_ds.data.shards`, `mimo_ds.data.records`), the loader's plan and
collation, the teacher cache, the objectives (which fields their roles may read, and the texts they get) and the
demo. A kind states
- `name`: what `index.json` records as its `kind`;
- `fields`: the text fields of a record, which an objective's roles read (every record also carries an `id`);
- `languages`, its languages rule, one of two:
  - `TAGGED`: a record is in one language, named by its `lang` field; the fields listed in `english` hold its English
    side, the others text in `lang`. A language selection picks records. (Stage-1 pairs.)
  - `PARALLEL`: every text field maps language → text over the same languages, English (`en`) among them; an
    objective's schedule gives each role its language per row. A language selection is asked of every record.
    (Stage-2 rows.)
What a converter writes is a record of its kind: `write_shards` refuses anything else, naming the record.

Declaring a kind registers it by name, as defining an objective does, so a kind declared outside the package is
written, validated, loaded and cached like the built-in ones (tests/test_record_kinds.py declares `triplets` and
trains a step on it). A leaf module: it imports nothing of mimo_ds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

#: The language every kind carries, the teacher's side.
ENGLISH = "en"


class Languages(Enum):
    TAGGED = "tagged"
    PARALLEL = "parallel"


_REGISTRY: dict[str, RecordKind] = {}


@dataclass(frozen=True)
class RecordKind:
    """One record kind; see the module docstring. Constructing one registers it under `name`."""

    name: str
    fields: tuple[str, ...]
    languages: Languages
    english: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.fields or {"id", "lang"} & set(self.fields):
            raise TypeError(f"record kind {self.name!r}: fields {self.fields} must be text fields besides id and lang")
        if self.english and (self.parallel or not set(self.english) <= set(self.fields)):
            raise TypeError(f"record kind {self.name!r}: `english` names fields of a tagged kind, got {self.english}")
        if _REGISTRY.get(self.name, self) != self:
            raise TypeError(f"record kind {self.name!r} is declared twice: {_REGISTRY[self.name]} and {self}")
        _REGISTRY[self.name] = self

    def __str__(self) -> str:
        return self.name

    @property
    def parallel(self) -> bool:
        return self.languages is Languages.PARALLEL

    @property
    def required(self) -> tuple[str, ...]:
        """The keys every record of the kind holds."""
        return ("id", *self.fields) if self.parallel else ("id", "lang", *self.fields)

    def language(self, record: dict[str, Any], field: str) -> str:
        """The language of a tagged record's `field`: English for its English fields, else the record's `lang`."""
        return ENGLISH if field in self.english else record["lang"]

    def text(self, record: dict[str, Any], field: str, language: str | None) -> str:
        """The text a role reading `field` gets: in `language` for a parallel kind (None: English); as the record
        holds it for a tagged one (its language is the field's own)."""
        if self.parallel:
            return record[field][language or ENGLISH]
        return record[field]

    def texts(self, record: dict[str, Any]) -> list[str]:
        """Every text of a valid record, field by field (a parallel field's in the record's language order)."""
        if self.parallel:
            return [text for field in self.fields for text in record[field].values()]
        return [record[field] for field in self.fields]

    def record_languages(self, record: dict[str, Any]) -> set[str]:
        """The languages a valid record carries: a tagged record's `lang`, a parallel record's language codes."""
        return set(record[self.fields[0]]) if self.parallel else {record["lang"]}


def record_kind(kind: str | RecordKind) -> RecordKind:
    """The kind registered under `kind` (a kind is returned as is); the error lists the known kinds."""
    if isinstance(kind, RecordKind):
        return kind
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown record kind {kind!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def record_kinds() -> list[str]:
    return sorted(_REGISTRY)


PAIRS = RecordKind("pairs", ("text", "en"), Languages.TAGGED, english=("en",))
ROWS = RecordKind("rows", ("query", "passage"), Languages.PARALLEL)
