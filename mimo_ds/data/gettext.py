"""gettext catalogues (.po / .mo, via polib) as parallel data, and the demo corpus built from Django's catalogues.

A catalogue maps an English msgid to its translation (msgstr) in one locale: the same shape as the public
localisation corpora (KDE, GNOME, Ubuntu). Obsolete, plural, fuzzy, untranslated and copied-through (translation ==
English) entries are skipped and counted (plural entries carry several forms and no single parallel sentence).

The Django mini-benchmark (`mimo_ds.eval.mini`) reads the catalogues with the functions here (locale, files, entries,
query = `half_text`), so the demo trains and evaluates on the same locale and the same rule; only the held-out split
differs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import polib

from mimo_ds.data.filters import FilterReport, RawPair, RawRow, Stage1Filters, filter_pairs, filter_rows
from mimo_ds.data.shards import write_shards
from mimo_ds.errors import InputError

# Our language code → Django's locale folder, for training (demo shards) and evaluation (mini-benchmark) alike.
# Chinese is Simplified (zh_Hans, as mMARCO/Belebele use). Portuguese is Brazilian `pt_BR`: Django 5.2's European `pt`
# leaves 46 entries untranslated (817 usable vs 864). Every other code is Django's own folder name.
DJANGO_LOCALES = {"zh": "zh_Hans", "nl": "nl", "pt": "pt_BR", "ar": "ar", "de": "de", "es": "es", "fr": "fr",
                  "hi": "hi", "id": "id", "it": "it", "ja": "ja", "ru": "ru", "vi": "vi", "th": "th", "ko": "ko"}
# MIMO's 14 languages: the demo's training languages and the mini-benchmark's default.
DEMO_LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "nl", "pt", "ru", "vi", "zh")
# Scripts written without spaces between words: a query is the first half of the characters, not of the words.
SPACELESS = frozenset({"ja", "zh", "th", "lo", "km", "my", "bo"})
MIN_ROW_WORDS = 6


def django_locale(lang: str) -> str:
    return DJANGO_LOCALES.get(lang, lang)


def django_root() -> Path:
    """The installed Django package folder (its catalogues ship inside the wheel)."""
    import django

    return Path(django.__file__).parent


def django_catalogues(lang: str) -> list[Path]:
    """Every django.po / djangojs.po of the installed Django for our language code: Django's own (conf) first, then the
    contrib apps' in path order, the order in which the first translation seen for a msgid wins."""
    root = django_root()
    locale = django_locale(lang)
    found = sorted(root.glob(f"conf/locale/{locale}/LC_MESSAGES/*.po"))
    found += sorted(root.glob(f"contrib/*/locale/{locale}/LC_MESSAGES/*.po"))
    return found


def mo_is_whole(path: Path) -> bool:
    """Whether every string a .mo file's tables point to lies inside the file. polib reads a truncated .mo without
    complaint, as cut msgids and empty translations."""
    data = path.read_bytes()
    for order in ("<", ">"):
        if len(data) >= 20 and struct.unpack(order + "I", data[:4])[0] == 0x950412DE:
            count, originals, translations = struct.unpack(order + "3I", data[8:20])
            break
    else:
        return False
    for table in (originals, translations):
        if table + 8 * count > len(data):
            return False
        for i in range(count):
            length, offset = struct.unpack(order + "2I", data[table + 8 * i: table + 8 * i + 8])
            if offset + length > len(data):
                return False
    return True


def catalogue_entries(path: str | os.PathLike[str], lang: str, report: FilterReport) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) for each usable entry of a .po or .mo file; skipped entries are counted under `lang`. A file
    that cannot be read (bad encoding, broken syntax) or a truncated .mo gives no entries and is counted in
    `read_errors` under its path (`unreadable_catalogue`, `truncated_catalogue`): one bad file does not end a
    conversion."""
    path = Path(path)
    if path.suffix == ".mo" and path.is_file() and not mo_is_whole(path):
        report.read_error(str(path), "truncated_catalogue")
        return
    try:
        catalogue = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    except (OSError, ValueError) as exc:
        report.read_error(str(path), "unreadable_catalogue")
        report.notes.append(f"{path}: not read: {exc}")
        return
    for entry in catalogue:
        if entry.obsolete:
            report.drop(lang, "gettext_obsolete")
        elif entry.msgid_plural:
            report.drop(lang, "gettext_plural")
        elif "fuzzy" in entry.flags:
            report.drop(lang, "gettext_fuzzy")
        elif not entry.msgstr.strip() or not entry.msgid.strip():
            report.drop(lang, "gettext_untranslated")
        elif entry.msgstr.split() == entry.msgid.split():  # copied through: no translation, only the English again
            report.drop(lang, "gettext_copied")
        else:
            yield entry.msgid, entry.msgstr


def catalogue_table(paths: Iterable[str | os.PathLike[str]], lang: str, report: FilterReport) -> dict[str, str]:
    """English msgid → translation (both stripped) over `paths` in order; the first translation seen for a msgid
    wins (a later one is counted `gettext_duplicate`). Skipped entries are counted under `lang`."""
    table: dict[str, str] = {}
    for path in paths:
        for msgid, msgstr in catalogue_entries(path, lang, report):
            if msgid.strip() in table:
                report.drop(lang, "gettext_duplicate")
            else:
                table[msgid.strip()] = msgstr.strip()
    return table


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
    catalogues: dict[str, Sequence[Path]], out_dir: str | os.PathLike[str], kind: str, *,
    shard_size: int = 1000, filters: Stage1Filters | None = None, exclude_heldout: bool = False,
    seed: int | None = 42, id_prefix: str = "gettext", source: str = "gettext",
) -> Path:
    """Shards from gettext catalogues by language: `pairs` (stage-1 filters applied) or `rows` (parallel across all
    the languages). Returns the index path."""
    catalogues = {lang: paths for lang, paths in catalogues.items() if lang != "en"}  # English is the msgid
    report = FilterReport()
    if kind == "pairs":
        filters = filters or Stage1Filters(seed=seed, exclude_heldout=exclude_heldout)
        records = filter_pairs(gettext_pairs(catalogues, report, source), filters, report, id_prefix)
        settings: Any = filters
    elif kind == "rows":
        records = filter_rows(gettext_rows(catalogues, report), catalogues, report, id_prefix, exclude_heldout, seed)
        settings = None
        report.notes.append(f"rows: English msgids of ≥ {MIN_ROW_WORDS} words translated in all languages; "
                            "query = first half of the words (characters for scripts without spaces)")
    else:
        raise ValueError(f"kind must be 'pairs' or 'rows', got {kind!r}")
    report_dict = report.as_dict(settings)
    report_dict["exclude_heldout"] = exclude_heldout
    report_dict["catalogues"] = {lang: [str(p) for p in paths] for lang, paths in sorted(catalogues.items())}
    return write_shards(records, out_dir, kind, shard_size, source=source, filter_report=report_dict)  # type: ignore[arg-type]


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
        "pairs": build_gettext_shards(catalogues, out / "pairs", "pairs", filters=filters, id_prefix="djp", **common),
        "rows": build_gettext_shards(catalogues, out / "rows", "rows", id_prefix="djr", **common),
    }
