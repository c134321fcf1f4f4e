"""An out-of-domain MLIR mini-benchmark: whole gettext catalogues held out from training, in any languages.

`wheels-mlir` (`mimo_ds.eval.mini.build_wheels_benchmark`) is in-domain: its documents are the held-out *entries* of
the very catalogues the training rows come from, so a contrastive baseline trained on the other entries has seen the
same application's vocabulary and phrasing. This builder holds out whole catalogues instead (one application's, or
one wheel's, strings in every language): every entry of a held-out catalogue may become a document, any text that
also occurs in a training catalogue (as an English msgid or as a translation, in any language) is dropped and
counted, and the languages are the caller's, typically more than training reads (Django and wagtail translate
Hindi, Indonesian, Vietnamese, Korean, Thai, Turkish, … which the demo does not train on).

A catalogue is named by where it sits in its wheel (`catalogue_id`: e.g. `django/contrib/gis:django`,
`wagtail/snippets:django`, `jupyterlab_language_pack:jupyterlab`), the same name in every language, so a recipe can
hold out a list of them and train on the rest (`split_catalogues`). Construction is that of `wheels-mlir`: document
= the whole message in a language, query = its first half (`half_text`), relevant = every language version of the
entry, with `exclude_self` on. The reserved wheels' catalogues (`mimo_ds.data.wheels.RESERVED`) are refused on every
path, held-out and training alike.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mimo_ds.data.filters import FilterReport
from mimo_ds.data.gettext import MIN_ROW_WORDS, catalogue_table
from mimo_ds.data.wheels import catalogues, check_not_reserved
from mimo_ds.eval.benchmark import write_benchmark
from mimo_ds.eval.mini import halves_benchmark

#: lang → catalogue files, in the order whose first translation of a msgid wins
Files = Mapping[str, Sequence[Path]]
SHARED = "shared_with_training"


def catalogue_id(path: Path) -> str:
    """`<folder holding locale/, below the site-packages folder>:<file stem>`, the same for every language: a
    per-language package suffix (`jupyterlab_language_pack_de_DE`) is dropped."""
    parts = Path(path).parts
    if "locale" not in parts:
        raise ValueError(f"{path}: not a catalogue under a locale/ folder")
    at = len(parts) - 1 - parts[::-1].index("locale")
    start = max((i + 1 for i, p in enumerate(parts[:at]) if p in ("site-packages", "dist-packages")), default=at - 1)
    owner = list(parts[start:at])
    locale = parts[at + 1] if at + 1 < len(parts) else ""
    if owner and locale and owner[0].lower().endswith("_" + locale.lower()):
        owner[0] = owner[0][: -len(locale) - 1]
    return f"{'/'.join(owner)}:{Path(path).stem}"


def source_catalogues(sources: Sequence[str], languages: Sequence[str]) -> dict[str, dict[str, list[Path]]]:
    """catalogue id → language → files, over the wheels' sources (`mimo_ds.data.wheels.SOURCES`)."""
    out: dict[str, dict[str, list[Path]]] = {}
    for by_lang in catalogues(sources, languages).values():
        for lang, paths in by_lang.items():
            for path in paths:
                out.setdefault(catalogue_id(path), {}).setdefault(lang, []).append(path)
    return out


def split_catalogues(by_catalogue: Mapping[str, Files], heldout: Iterable[str]) -> tuple[dict[str, list[Path]],
                                                                                       dict[str, list[Path]]]:
    """(held-out files, training files) by language; every name in `heldout` must be a catalogue of `by_catalogue`."""
    heldout = set(heldout)
    if unknown := sorted(heldout - set(by_catalogue)):
        raise ValueError(f"held-out catalogues {unknown} are not among the sources' ({len(by_catalogue)} found)")
    held: dict[str, list[Path]] = {}
    training: dict[str, list[Path]] = {}
    for name, by_lang in by_catalogue.items():
        side = held if name in heldout else training
        for lang, paths in by_lang.items():
            side.setdefault(lang, []).extend(paths)
    return held, training


def entry_id(msgid: str) -> str:
    return "cat-" + hashlib.sha1(msgid.strip().encode("utf-8")).hexdigest()[:12]


def heldout_catalogue_parallel(heldout: Files, training: Files, languages: Sequence[str], *, min_words: int,
                               min_languages: int | None, report: FilterReport) -> dict[str, dict[str, str]]:
    """`{entry id: {lang: text}}` from the held-out catalogues: English msgids of ≥ `min_words` words, each version
    kept unless the same text occurs anywhere in the training catalogues (counted as `shared_with_training` under
    its language; an English msgid found there drops the entry), translated in every language of `languages` (or in
    at least `min_languages`, English included)."""
    held_paths = {p.resolve() for paths in heldout.values() for p in check_not_reserved(paths)}
    training_paths = {p.resolve() for paths in training.values() for p in check_not_reserved(paths)}
    if both := sorted(held_paths & training_paths):
        raise ValueError(f"{both[0]} is both held out and a training catalogue ({len(both)} such files)")
    seen = FilterReport()  # the training side's own skips are not this benchmark's
    training_texts = {text for lang, paths in training.items()
                      for msgid, msgstr in catalogue_table(paths, lang, seen).items() for text in (msgid, msgstr)}
    tables = {lang: catalogue_table(heldout.get(lang, ()), lang, report) for lang in languages if lang != "en"}
    needed = len(languages) if min_languages is None else min_languages
    out: dict[str, dict[str, str]] = {}
    for msgid in sorted(set().union(*tables.values()) if tables else ()):
        if len(msgid.split()) < min_words:
            continue
        versions = {lang: msgid if lang == "en" else tables[lang].get(msgid) for lang in languages}
        for lang, text in versions.items():
            if text and text in training_texts:
                report.drop(lang, SHARED)
                versions[lang] = None
        if "en" in versions and versions["en"] is None:
            continue
        versions = {lang: text for lang, text in versions.items() if text}
        if len(versions) >= needed:
            out[entry_id(msgid)] = versions
    return out


def build_heldout_catalogue_benchmark(out_dir: str | Path, heldout: Files, training: Files,
                                      languages: Sequence[str], *, min_words: int = MIN_ROW_WORDS,
                                      min_languages: int | None = None, name: str = "catalogues-ood-mlir",
                                      heldout_names: Sequence[str] = ()) -> Path:
    """Write the benchmark folder from the held-out catalogue files (lang → files), every text of the training
    catalogues excluded; returns it. `heldout_names` (catalogue ids) are recorded in the metadata."""
    report = FilterReport()
    passages = heldout_catalogue_parallel(heldout, training, languages, min_words=min_words,
                                          min_languages=min_languages, report=report)
    if not passages:
        raise ValueError(f"no entries with ≥ {min_words} words translated in "
                         f"{min_languages or len(languages)} of {list(languages)} in the held-out catalogues")
    bench = halves_benchmark(passages, name)
    documents = Counter(lang for versions in passages.values() for lang in versions)
    bench.meta.update({
        "source": "whole gettext catalogues held out from training (mimo_ds.eval.heldout_catalogues)",
        "split": "held-out catalogues; every text also in a training catalogue dropped",
        "heldout_catalogues": sorted(heldout_names) or sorted({catalogue_id(p) for ps in heldout.values() for p in ps}),
        "query": "mimo_ds.data.gettext.half_text (as the stage-2 rows)", "exclude_self": True,
        "min_words": min_words, "min_languages": min_languages, "entries": len(passages),
        "documents_per_language": dict(sorted(documents.items())),
        SHARED: {lang: counts["dropped"].get(SHARED, 0)
                 for lang, counts in report.as_dict(None)["languages"].items()},
    })
    return write_benchmark(bench, out_dir)


def build_heldout_sources_benchmark(out_dir: str | Path, heldout_sources: Sequence[str],
                                    training_sources: Sequence[str], languages: Sequence[str], *,
                                    min_words: int = MIN_ROW_WORDS, min_languages: int | None = None,
                                    name: str = "catalogues-ood-mlir") -> Path:
    """The benchmark from whole wheel sources (`mimo_ds.data.wheels.SOURCES` names) that training does not read,
    e.g. training on django, wagtail and jupyterlab (`build_pairs`/`build_rows` take the sources) and evaluating
    on allauth and rest_framework."""
    if both := sorted(set(heldout_sources) & set(training_sources)):
        raise ValueError(f"sources {both} are both held out and trained on")
    held = source_catalogues(heldout_sources, languages)
    training = source_catalogues(training_sources, languages)
    held_files, _ = split_catalogues(held, held)
    _, training_files = split_catalogues(training, ())
    return build_heldout_catalogue_benchmark(out_dir, held_files, training_files, languages, min_words=min_words,
                                             min_languages=min_languages, name=name, heldout_names=sorted(held))
