"""Real, offline mini-benchmarks built from gettext catalogues that ship in wheels, held-out entries only.

`build_mini_benchmark` uses Django's catalogues; `build_wheels_benchmark` those of several wheels
(`mimo_ds.data.wheels`: the demo's sources), with MLIR's `exclude_self` option on.

Each catalogue entry is an English message (msgid) with its translations, i.e. parallel text in up to ~100
languages that ships inside a registry package. The demo trains on entries that `is_heldout` rejects; this builder
keeps only the entries it accepts, so no text seen in training is evaluated. Construction mirrors the demo's stage-2
rows: document = the full message in a language, query = its first half (words, or characters for scripts written
without spaces), relevant = every language version of the same entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from mimo_ds.catalogues import catalogue_table, django_catalogues, django_locale
from mimo_ds.data.filters import FilterReport
from mimo_ds.data.gettext import DEMO_LANGUAGES, MIN_ROW_WORDS, check_django_catalogues, half_text
from mimo_ds.data.splits import is_heldout
from mimo_ds.eval.benchmark import write_benchmark
from mimo_ds.errors import InputError
from mimo_ds.eval.builders import build_english_query_mlir, build_mlir, build_multi_monolingual

MIMO_LANGUAGES = DEMO_LANGUAGES
BUILDERS = {"mlir": build_mlir, "mlir-en": build_english_query_mlir, "multi-monolingual": build_multi_monolingual}


def entry_id(msgid: str) -> str:
    """The benchmark id of a catalogue entry (its stripped English msgid)."""
    return "dj-" + hashlib.sha1(msgid.strip().encode("utf-8")).hexdigest()[:12]


def django_parallel(languages: Sequence[str], *, min_words: int = MIN_ROW_WORDS, min_languages: int | None = None,
                    report: FilterReport | None = None) -> dict[str, dict[str, str]]:
    """Held-out entries as `{entry id: {lang: text}}`: English msgid with ≥ `min_words` words, translated in every
    language of `languages` (or in at least `min_languages` of them, English included, when given). Catalogues,
    locales and skipped entries are those of the demo's training rows (`mimo_ds.data.gettext`); skips are counted in
    `report` when given."""
    report = report if report is not None else FilterReport()
    files = {lang: django_catalogues(lang) for lang in languages if lang != "en"}
    check_django_catalogues(files)
    return heldout_parallel(files, languages, min_words=min_words, min_languages=min_languages, report=report)


def heldout_parallel(files: Mapping[str, Sequence[Path]], languages: Sequence[str], *, min_words: int,
                     min_languages: int | None, report: FilterReport, disjoint: bool = False
                     ) -> dict[str, dict[str, str]]:
    """`{entry id: {lang: text}}` for the held-out English msgids of ≥ `min_words` words in the catalogues `files`
    (non-English language → files, first translation seen wins), translated in every language of `languages` (or in
    at least `min_languages` of them, English included). `disjoint` also drops a held-out translation that equals a
    training-side text (two English messages can share a translation), counted as `shared_with_training`."""
    needed = len(languages) if min_languages is None else min_languages
    if needed > len(languages):
        raise InputError(f"min_languages {needed} is more than the {len(languages)} languages asked for "
                         f"({', '.join(languages)})")
    tables = {lang: catalogue_table(paths, lang, report) for lang, paths in files.items()}
    training = ({t for table in tables.values() for m, t in table.items() if not is_heldout(m)}
                | {m for table in tables.values() for m in table if not is_heldout(m)}) if disjoint else set()
    out: dict[str, dict[str, str]] = {}
    for msgid in sorted(set().union(*tables.values()) if tables else ()):
        if len(msgid.split()) < min_words or not is_heldout(msgid):
            continue
        versions = {lang: msgid if lang == "en" else tables[lang].get(msgid) for lang in languages}
        for lang, text in versions.items():
            if text and text in training:
                report.drop(lang, "shared_with_training")
                versions[lang] = None
        versions = {lang: text for lang, text in versions.items() if text}
        if len(versions) >= needed:
            out[entry_id(msgid)] = versions
    return out


def halves_benchmark(passages: Mapping[str, Mapping[str, str]], name: str, protocol: str = "mlir"):
    """Messages → a benchmark: each message (every language version) is a document, its first half
    (`half_text`, as the stage-2 rows) the query, and every language version of the message relevant."""
    queries = {eid: {lang: half_text(text, lang) for lang, text in versions.items()}
               for eid, versions in passages.items()}
    return BUILDERS[protocol](passages, queries, {eid: [eid] for eid in passages}, name=name)


def build_mini_benchmark(out_dir: str | Path, languages: Sequence[str] = MIMO_LANGUAGES, *, protocol: str = "mlir",
                         min_words: int = MIN_ROW_WORDS, min_languages: int | None = None, name: str | None = None) -> Path:
    """Write the Django mini-benchmark folder (`protocol`: mlir, mlir-en or multi-monolingual); returns it."""
    import django

    if protocol not in BUILDERS:
        raise InputError(f"protocol {protocol!r} is not one of {sorted(BUILDERS)}")
    report = FilterReport()
    passages = django_parallel(languages, min_words=min_words, min_languages=min_languages, report=report)
    if not passages:
        raise InputError(f"no held-out Django entries with ≥ {min_words} words translated in {list(languages)}")
    default_name = f"django-mini-{protocol}" + (f"-min{min_languages}" if min_languages else "")
    bench = halves_benchmark(passages, name or default_name, protocol)
    bench.meta.update({"source": f"django {django.__version__} gettext catalogues (django.po, djangojs.po)",
                       "split": "heldout (mimo_ds.data.splits.is_heldout on the English msgid)",
                       "query": "mimo_ds.data.gettext.half_text (as the demo's stage-2 rows)",
                       "min_words": min_words, "min_languages": min_languages, "entries": len(passages),
                       "locales": {lang: django_locale(lang) for lang in languages if lang != "en"},
                       "skipped": {lang: counts["dropped"] for lang, counts in
                                   report.as_dict(None)["languages"].items()}})
    return write_benchmark(bench, out_dir)


def build_wheels_benchmark(out_dir: str | Path, sources: Sequence[str], languages: Sequence[str], *,
                           min_words: int = MIN_ROW_WORDS, min_languages: int | None = None,
                           name: str = "wheels-mlir") -> Path:
    """The MLIR mini-benchmark from the held-out strings of several wheels' catalogues (`mimo_ds.data.wheels`),
    built like the Django one (document = the whole message, query = its first half, every language version
    relevant), with `exclude_self` on: besides the paper's protocol, the runner reports every metric with the query's
    own-language copy taken out of the ranking and out of the relevant set (`xself/...`)."""
    from mimo_ds.data.wheels import catalogues, merged

    report = FilterReport()
    by_source = catalogues(sources, languages)
    passages = heldout_parallel(merged(by_source, languages), languages, min_words=min_words,
                                min_languages=min_languages, report=report, disjoint=True)
    if not passages:
        raise InputError(f"no held-out entries with ≥ {min_words} words translated in {list(languages)} "
                         f"in the catalogues of {list(sources)}")
    bench = halves_benchmark(passages, name)
    bench.meta.update({"source": f"gettext catalogues of the wheels {', '.join(sources)} (mimo_ds.data.wheels)",
                       "split": "heldout (mimo_ds.data.splits.is_heldout on the English msgid)",
                       "query": "mimo_ds.data.gettext.half_text (as the stage-2 rows)", "exclude_self": True,
                       "min_words": min_words, "min_languages": min_languages, "entries": len(passages),
                       "shared_with_training": {lang: counts["dropped"].get("shared_with_training", 0) for lang, counts
                                                in report.as_dict(None)["languages"].items()},
                       "catalogues": {src: {lang: len(p) for lang, p in sorted(by_lang.items())}
                                      for src, by_lang in by_source.items()}})
    return write_benchmark(bench, out_dir)
