"""Human translations that ship inside registry wheels: where they are, how many, and the demo corpus built from them.

Web frameworks and applications ship their user-interface strings as gettext catalogues, translated by people
(Transifex, Weblate, Crowdin communities), in dozens of languages: parallel text that installs with `pip`. The
sources here were chosen by a survey of such wheels (`python -m mimo_ds.data.wheels survey` prints it):

| source | wheel(s) | catalogues |
|---|---|---|
| django | Django | `django/conf/locale/…/django.po` and the contrib apps' |
| wagtail | wagtail | every app's `locale/…/django.po` |
| allauth | django-allauth | `allauth/locale/…/django.po` |
| rest_framework | djangorestframework | `rest_framework/locale/…/django.mo` (compiled only) |
| jupyterlab | jupyterlab-language-pack-<locale> (one wheel per language) | JupyterLab and its extensions' `.mo` |

The catalogues of the `weblate` and `sphinx` wheels are reserved for an outside check: no source may read them
(`RESERVED`, enforced on every path). Every catalogue goes through the existing gettext reader and the stage-1/stage-2
filters (`mimo_ds.data.gettext`, `mimo_ds.data.filters`), with the held-out split of `mimo_ds.data.splits`, so the
benchmark built from the held-out strings (`mimo_ds.eval.mini.build_wheels_benchmark`) never shares a text with
training.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimo_ds.catalogues import catalogue_table, django_catalogues
from mimo_ds.data.filters import FilterReport, RawPair, Stage1Filters, filter_pairs, filter_rows
from mimo_ds.data.gettext import MIN_ROW_WORDS, gettext_pairs, gettext_rows
from mimo_ds.data.shards import write_shards
from mimo_ds.data.splits import HELDOUT_BUCKETS
from mimo_ds.errors import InputError, report_errors
from mimo_ds.record_kinds import PAIRS, ROWS

RESERVED = ("weblate", "sphinx")
# Our code → the locale folder names to try, in order (the first that has catalogues wins).
LOCALES: dict[str, tuple[str, ...]] = {"zh": ("zh_Hans", "zh_CN", "zh"), "pt": ("pt_BR", "pt")}
JUPYTERLAB_LOCALES = {"ar": "ar_SA", "de": "de_DE", "es": "es_ES", "fr": "fr_FR", "id": "id_ID", "it": "it_IT",
                      "ja": "ja_JP", "nl": "nl_NL", "pt": "pt_BR", "ru": "ru_RU", "vi": "vi_VN", "zh": "zh_CN"}
# The demo's languages: every source above covers most of them (Hindi and Vietnamese are thin outside Django).
DEMO_LANGUAGES = ("en", "ar", "de", "es", "fr", "it", "ja", "nl", "pt", "ru", "zh")


class ReservedCatalogueError(InputError):
    """A catalogue path inside a reserved wheel (weblate, sphinx)."""


@dataclass(frozen=True)
class WheelSource:
    """One source of catalogues: its label, the pip distributions that carry it, and lang → catalogue files."""

    name: str
    distributions: str
    find: Callable[[str], list[Path]]


def package_root(package: str) -> Path | None:
    """An installed package's folder, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def check_not_reserved(paths: Iterable[Path]) -> list[Path]:
    """Refuse any catalogue inside a reserved wheel's package folder."""
    paths = list(paths)
    for path in paths:
        if any(part.lower() in RESERVED for part in Path(path).resolve().parts):
            raise ReservedCatalogueError(f"{path}: the catalogues of {' and '.join(RESERVED)} are reserved for an "
                                         "outside check and are never read")
    return paths


def _package_catalogues(package: str) -> Callable[[str], list[Path]]:
    """`<package>/**/locale/<locale>/LC_MESSAGES/*.po` (else the compiled `.mo`), first matching locale name."""

    def find(lang: str) -> list[Path]:
        root = package_root(package)
        if root is None:
            return []
        for locale in LOCALES.get(lang, (lang,)):
            for suffix in ("po", "mo"):
                found = sorted(root.glob(f"**/locale/{locale}/LC_MESSAGES/*.{suffix}"))
                if found:
                    return check_not_reserved(found)
        return []

    return find


def _jupyterlab_catalogues(lang: str) -> list[Path]:
    """One wheel per language: `jupyterlab_language_pack_<locale>/locale/<locale>/LC_MESSAGES/*.mo`."""
    locale = JUPYTERLAB_LOCALES.get(lang)
    root = package_root(f"jupyterlab_language_pack_{locale}") if locale else None
    return check_not_reserved(sorted(root.glob(f"locale/{locale}/LC_MESSAGES/*.mo"))) if root else []


SOURCES: dict[str, WheelSource] = {s.name: s for s in (
    WheelSource("django", "Django", lambda lang: check_not_reserved(django_catalogues(lang))),
    WheelSource("wagtail", "wagtail", _package_catalogues("wagtail")),
    WheelSource("allauth", "django-allauth", _package_catalogues("allauth")),
    WheelSource("rest_framework", "djangorestframework", _package_catalogues("rest_framework")),
    WheelSource("jupyterlab", "jupyterlab-language-pack-<locale>", _jupyterlab_catalogues),
)}
DEMO_SOURCES = tuple(SOURCES)


def catalogues(sources: Sequence[str], languages: Sequence[str]) -> dict[str, dict[str, list[Path]]]:
    """source → non-English language → catalogue files (languages a source lacks are left out)."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown catalogue sources {unknown}; known: {sorted(SOURCES)}")
    out = {}
    for name in sources:
        found = {lang: SOURCES[name].find(lang) for lang in languages if lang != "en"}
        out[name] = {lang: paths for lang, paths in found.items() if paths}
    return out


def merged(by_source: dict[str, dict[str, list[Path]]], languages: Sequence[str]) -> dict[str, list[Path]]:
    """language → every source's catalogues, in source order (the first translation seen for a msgid wins)."""
    return {lang: [p for files in by_source.values() for p in files.get(lang, [])] for lang in languages if lang != "en"}


def survey(sources: Sequence[str], languages: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """source → language → {catalogues, entries (usable translated msgids), long (≥ MIN_ROW_WORDS words)}."""
    found = catalogues(sources, languages)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name, by_lang in found.items():
        out[name] = {}
        for lang, paths in by_lang.items():
            table = catalogue_table(paths, lang, FilterReport())
            out[name][lang] = {"catalogues": len(paths), "entries": len(table),
                               "long": sum(len(m.split()) >= MIN_ROW_WORDS for m in table)}
    return out


# ---------------------------------------------------------------------------------------------- the demo corpus
def _shuffled_pairs(by_source: dict[str, dict[str, list[Path]]], report: FilterReport, seed: int) -> list[RawPair]:
    """Every source's raw pairs, shuffled with the seed, so a per-language cap samples all sources alike."""
    pairs = [p for name, by_lang in by_source.items() for p in gettext_pairs(by_lang, report, source=name)]
    random.Random(seed).shuffle(pairs)
    return pairs


def _pair_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Kept pairs per source and language (the source label is the part of `source` before ':')."""
    counts: dict[str, Counter[str]] = {}
    for r in records:
        source = r.get("source", "").split(":")[0] or "unknown"
        counts.setdefault(source, Counter())[r["lang"]] += 1
    return {source: dict(sorted(c.items())) for source, c in sorted(counts.items())}


def _row_sources(by_source: dict[str, dict[str, list[Path]]], records: list[dict[str, Any]]) -> dict[str, int]:
    """Kept rows per source: the first source (in order) whose catalogues translate the row's English passage."""
    tables = {name: set().union(*(catalogue_table(p, lang, FilterReport()) for lang, p in by_lang.items()))
              for name, by_lang in by_source.items()}
    counts: Counter[str] = Counter()
    for r in records:
        counts[next((name for name, msgids in tables.items() if r["passage"]["en"] in msgids), "unknown")] += 1
    return dict(counts)


def build_pairs(out_dir: str | Path, sources: Sequence[str], languages: Sequence[str], *, cap_per_language: int,
                seed: int = 42, shard_size: int = 500) -> Path:
    """Stage-1 pairs from the sources' training split: the paper's filters (English deduplicated per language, as
    every locale translates the same msgids), at most `cap_per_language` pairs per language and as many en→en
    identity pairs; written as shards whose index records the split, filters and counts per source and language."""
    by_source = catalogues(sources, languages)
    filters = Stage1Filters(dedup_english="per_language", cap_per_language=cap_per_language,
                            identity_pairs=cap_per_language, exclude_heldout=True, seed=seed)
    report = FilterReport()
    records = filter_pairs(_shuffled_pairs(by_source, report, seed), filters, report, "wp")
    report_dict = {**report.as_dict(filters), **_split_note(), "catalogues": _catalogue_lists(by_source)}
    return write_shards(records, out_dir, PAIRS, shard_size, source="+".join(sources), filter_report=report_dict,
                        extra={"pairs_by_source": _pair_counts(records)})


def build_rows(out_dir: str | Path, sources: Sequence[str], languages: Sequence[str], *, seed: int = 42,
               shard_size: int = 500) -> Path:
    """Stage-2 rows from the sources' training split: English msgids of ≥ MIN_ROW_WORDS words translated in every
    language of `languages` (by any source), query = the first half; counts per source in the index."""
    by_source = catalogues(sources, languages)
    by_lang = merged(by_source, languages)
    missing = [lang for lang in languages if lang != "en" and not by_lang[lang]]
    if missing:
        raise InputError(f"no source in {list(sources)} has catalogues for {missing}")
    report = FilterReport()
    records = filter_rows(gettext_rows(by_lang, report), by_lang, report, "wr", True, seed)
    report.notes.append(f"rows: English msgids of ≥ {MIN_ROW_WORDS} words translated in all of {sorted(languages)}; "
                        "query = first half of the words (characters for scripts without spaces)")
    report_dict = {**report.as_dict(None), **_split_note(), "catalogues": _catalogue_lists(by_source)}
    return write_shards(records, out_dir, ROWS, shard_size, source="+".join(sources), filter_report=report_dict,
                        extra={"rows_by_source": _row_sources(by_source, records)})


def _split_note() -> dict[str, Any]:
    return {"exclude_heldout": True,
            "split": f"training: English text with crc32 % {HELDOUT_BUCKETS} != 0 (mimo_ds.data.splits.is_heldout)"}


def _catalogue_lists(by_source: dict[str, dict[str, list[Path]]]) -> dict[str, dict[str, int]]:
    return {name: {lang: len(paths) for lang, paths in sorted(by_lang.items())} for name, by_lang in by_source.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimo_ds.data.wheels", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["survey"])
    parser.add_argument("--languages", default=",".join(DEMO_LANGUAGES))
    parser.add_argument("--sources", default=",".join(DEMO_SOURCES))
    args = parser.parse_args(argv)
    return report_errors(lambda: _survey(args.sources.split(","), args.languages.split(",")))


def _survey(sources: list[str], languages: list[str]) -> int:
    languages = [lang for lang in languages if lang != "en"]
    result = survey(sources, languages)
    print("usable translated msgids per language (of them ≥ 6 words); '-' = the source has no catalogue")
    print(f"{'source':16}" + "".join(f"{lang:>10}" for lang in languages))
    for name, by_lang in result.items():
        cells = [f"{by_lang[lang]['entries']}/{by_lang[lang]['long']}" if lang in by_lang else "-" for lang in languages]
        print(f"{name:16}" + "".join(f"{c:>10}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
