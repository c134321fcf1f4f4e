"""gettext catalogues as parallel data: stage-1 pairs and stage-2 rows, and the demo corpus built from Django's.

The catalogues are read by `mimo_ds.catalogues` (entries, tables, Django's locales). The Django mini-benchmark
(`mimo_ds.eval.mini`) reads them with the same functions and makes its queries with `half_text` here, so the demo
trains and evaluates on the same locale and the same rule; only the held-out split differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mimo_ds.catalogues import catalogue_entries, catalogue_table, django_catalogues, django_locale, django_root
from mimo_ds.data.filters import FilterReport, RawPair, RawRow, Stage1Filters, filter_pairs, filter_rows
from mimo_ds.data.shards import write_shards
from mimo_ds.errors import InputError
from mimo_ds.record_kinds import PAIRS, ROWS, RecordKind, record_kind

# MIMO's 14 languages: the demo's training languages and the mini-benchmark's default.
DEMO_LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "nl", "pt", "ru", "vi", "zh")
# Scripts written without spaces between words: a query is the first half of the characters, not of the words.
SPACELESS = frozenset({"ja", "zh", "th", "lo", "km", "my", "bo"})
MIN_ROW_WORDS = 6


def gettext_pairs(catalogues: dict[str, Sequence[Path]], report: FilterReport, source: str = "gettext") -> Iterator[RawPair]:
    """Stage-1 raw pairs (English msgid, translation) from catalogues by language, languages in sorted order."""
    for lang in sorted(catalogues):
        for path in catalogues[lang]:
            for msgid, msgstr in catalogue_entries(path, lang, report):
                yield RawPair(lang, msgid, msgstr, f"{source}:{path.parent.parent.parent.name}/{path.name}")


def check_django_catalogues(catalogues: dict[str, Sequence[Path]]) -> None:
    """Fail, naming the languages and their locale folders, when the installed Django has no catalogue for some."""
    if missing := [lang for lang, paths in catalogues.items() if not paths]:
        raise InputError(f"Django {django_root()} has no catalogues for {missing} "
                         f"(locale folders {[django_locale(l) for l in missing]})")


def half_text(text: str, lang: str) -> str:
    """The first half of the words (of the characters for scripts without spaces, or a text of one word), as a query
    for the passage: the rule for the demo's stage-2 rows and the mini-benchmark's queries alike."""
    words = text.split()
    if lang in SPACELESS or len(words) < 2:
        return text[: max(1, len(text) // 2)].strip()
    return " ".join(words[: len(words) // 2])


def gettext_rows(catalogues: dict[str, Sequence[Path]], report: FilterReport) -> Iterator[RawRow]:
    """Stage-2 raw rows: each English msgid of ≥ MIN_ROW_WORDS words translated in every language of `catalogues`.

    passage[lang] = the whole text, query[lang] = its first half; English is the msgid itself. The first translation
    seen for a msgid (catalogues in order) wins; msgids missing in some language are counted under that language.
    """
    tables = {lang: catalogue_table(catalogues[lang], lang, report) for lang in sorted(catalogues)}
    english = dict.fromkeys(m for table in tables.values() for m in table)  # every msgid, first-seen order
    for number, msgid in enumerate(english):
        if len(msgid.split()) < MIN_ROW_WORDS:
            for lang, table in tables.items():
                if msgid in table:
                    report.drop(lang, f"fewer_than_{MIN_ROW_WORDS}_words")
            continue
        missing = [lang for lang, table in tables.items() if msgid not in table]
        if missing:
            for lang, table in tables.items():
                if msgid in table:
                    report.drop(lang, "not_translated_in_all")
            continue
        texts = {"en": msgid, **{lang: tables[lang][msgid] for lang in tables}}
        yield RawRow(str(number), {l: half_text(t, l) for l, t in texts.items()}, texts)


def build_gettext_shards(
    catalogues: dict[str, Sequence[Path]], out_dir: str | os.PathLike[str], kind: RecordKind | str, *,
    shard_size: int = 1000, filters: Stage1Filters | None = None, exclude_heldout: bool = False,
    seed: int | None = 42, id_prefix: str = "gettext", source: str = "gettext",
) -> Path:
    """Shards from gettext catalogues by language: `pairs` (stage-1 filters applied) or `rows` (parallel across all
    the languages). Returns the index path."""
    catalogues = {lang: paths for lang, paths in catalogues.items() if lang != "en"}  # English is the msgid
    report = FilterReport()
    kind = record_kind(kind)
    if kind is PAIRS:
        filters = filters or Stage1Filters(seed=seed, exclude_heldout=exclude_heldout)
        records = filter_pairs(gettext_pairs(catalogues, report, source), filters, report, id_prefix)
        settings: Any = filters
    elif kind is ROWS:
        records = filter_rows(gettext_rows(catalogues, report), catalogues, report, id_prefix, exclude_heldout, seed)
        settings = None
        report.notes.append(f"rows: English msgids of ≥ {MIN_ROW_WORDS} words translated in all languages; "
                            "query = first half of the words (characters for scripts without spaces)")
    else:
        raise ValueError(f"gettext catalogues make {PAIRS} or {ROWS}, not {kind}")
    report_dict = report.as_dict(settings)
    report_dict["exclude_heldout"] = exclude_heldout
    report_dict["catalogues"] = {lang: [str(p) for p in paths] for lang, paths in sorted(catalogues.items())}
    return write_shards(records, out_dir, kind, shard_size, source=source, filter_report=report_dict)


def build_django_demo_shards(
    out_dir: str | os.PathLike[str], languages: Iterable[str] = DEMO_LANGUAGES, *, shard_size: int = 200,
    exclude_heldout: bool = True, seed: int = 42, filters: Stage1Filters | None = None,
) -> dict[str, Path]:
    """The demo corpus from the installed Django's catalogues: `out_dir/pairs` (stage 1) and `out_dir/rows`
    (stage 2), held-out entries skipped by default. Returns the two index paths."""
    langs = [lang for lang in dict.fromkeys(languages) if lang != "en"]
    catalogues = {lang: django_catalogues(lang) for lang in langs}
    # Every locale translates the same msgids: the paper's global English dedup would keep only the first language.
    filters = filters or Stage1Filters(dedup_english="per_language", seed=seed, exclude_heldout=exclude_heldout)
    check_django_catalogues(catalogues)
    out = Path(out_dir)
    common = dict(shard_size=shard_size, exclude_heldout=exclude_heldout, seed=seed, source="django")
    return {
        "pairs": build_gettext_shards(catalogues, out / "pairs", PAIRS, filters=filters, id_prefix="djp", **common),
        "rows": build_gettext_shards(catalogues, out / "rows", ROWS, id_prefix="djr", **common),
    }
