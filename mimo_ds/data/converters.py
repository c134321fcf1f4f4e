"""Corpus → shard folder, one function per input format; each applies the filters and saves their report in
`index.json`. (gettext catalogues: `mimo_ds.data.gettext`.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mimo_ds.data.filters import FilterReport, RawPair, RawRow, Stage1Filters, filter_pairs, filter_rows
from mimo_ds.data.shards import write_shards
from mimo_ds.data.sources import (
    PARALLEL_SENTENCES_CORPORA,
    pairs_from_objects,
    read_hf_disk,
    read_id_aligned_rows,
    read_jsonl_pairs,
    read_jsonl_rows,
    read_parallel_sentences,
)
from mimo_ds.errors import InputError
from mimo_ds.record_kinds import PAIRS, ROWS, record_kind


def _write_pairs(
    pairs: Iterable[RawPair], report: FilterReport, out_dir: str | os.PathLike[str], filters: Stage1Filters,
    shard_size: int, id_prefix: str, source: str, extra_report: dict[str, Any] | None = None,
) -> Path:
    records = filter_pairs(pairs, filters, report, id_prefix)
    return write_shards(records, out_dir, PAIRS, shard_size, source=source,
                        filter_report={**report.as_dict(filters), **(extra_report or {})})


def _write_rows(
    rows: Iterable[RawRow], languages: Sequence[str], report: FilterReport, out_dir: str | os.PathLike[str],
    shard_size: int, id_prefix: str, source: str, exclude_heldout: bool, seed: int | None,
) -> Path:
    records = filter_rows(rows, languages, report, id_prefix, exclude_heldout, seed)
    filter_report = {**report.as_dict(), "exclude_heldout": exclude_heldout, "seed": seed}
    return write_shards(records, out_dir, ROWS, shard_size, source=source, filter_report=filter_report)


def convert_parallel_sentences(
    root: str | os.PathLike[str], out_dir: str | os.PathLike[str], languages: Sequence[str], *,
    filters: Stage1Filters | None = None, corpora: Sequence[str] = PARALLEL_SENTENCES_CORPORA,
    shard_size: int = 10_000, id_prefix: str = "opus",
) -> Path:
    """sentence-transformers/parallel-sentences (`{corpus}/{corpus}-en-{lang}-train.tsv.gz`) → stage-1 pairs."""
    report = FilterReport()
    pairs = read_parallel_sentences(root, languages, report, corpora)
    return _write_pairs(pairs, report, out_dir, filters or Stage1Filters(), shard_size, id_prefix,
                        "parallel-sentences", {"corpora": list(corpora)})


def convert_jsonl(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], kind: str, *,
    languages: Sequence[str] | None = None, filters: Stage1Filters | None = None, shard_size: int = 10_000,
    id_prefix: str = "jsonl", lang: str | None = None, exclude_heldout: bool = False, seed: int | None = 42,
) -> Path:
    """JSONL (plain, .gz, .bz2 or .xz) → pairs (`lang`, `text`, `en` per line; `lang` may be fixed; with `languages`,
    pairs in other languages are counted `unknown_language`) or rows (`query`, `passage`, opt. `id`)."""
    report = FilterReport()
    if record_kind(kind) is PAIRS:
        filters = filters or Stage1Filters(exclude_heldout=exclude_heldout, seed=seed)
        pairs = read_jsonl_pairs(path, report, lang=lang, languages=languages)
        return _write_pairs(pairs, report, out_dir, filters, shard_size, id_prefix, f"jsonl:{Path(path).name}")
    rows = _rows_from_objects(read_jsonl_rows(path, report), str(path), report)
    return _write_rows(rows, _row_languages(languages, path), report, out_dir, shard_size, id_prefix,
                       f"jsonl:{Path(path).name}", exclude_heldout, seed)


def convert_hf_disk(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], kind: str, *,
    languages: Sequence[str] | None = None, filters: Stage1Filters | None = None, shard_size: int = 10_000,
    id_prefix: str = "hf", split: str = "train", lang: str | None = None,
    fields: tuple[str, str, str] = ("lang", "text", "en"), exclude_heldout: bool = False, seed: int | None = 42,
) -> Path:
    """A `datasets.save_to_disk` folder → pairs (columns `fields`, or a fixed `lang`) or rows (`query`/`passage`)."""
    report = FilterReport()
    source = f"hf-disk:{Path(path).name}"
    if record_kind(kind) is PAIRS:
        filters = filters or Stage1Filters(exclude_heldout=exclude_heldout, seed=seed)
        pairs = pairs_from_objects(read_hf_disk(path, split), str(path), report, lang=lang, fields=fields,
                                   languages=languages)
        return _write_pairs(pairs, report, out_dir, filters, shard_size, id_prefix, source)
    rows = _rows_from_objects(read_hf_disk(path, split), str(path), report)
    return _write_rows(rows, _row_languages(languages, path), report, out_dir, shard_size, id_prefix, source,
                       exclude_heldout, seed)


def convert_id_aligned(
    root: str | os.PathLike[str], out_dir: str | os.PathLike[str], languages: Sequence[str], *,
    shard_size: int = 10_000, id_prefix: str = "mmarco", exclude_heldout: bool = False, seed: int | None = 42,
    **patterns: str,
) -> Path:
    """ID-aligned per-language queries and passages (mMARCO layout by default) → stage-2 rows `{prefix}-{qid}-{pid}`."""
    report = FilterReport()
    rows = (RawRow(f"{qid}-{pid}", q, p) for qid, pid, q, p in read_id_aligned_rows(root, languages, report, **patterns))
    return _write_rows(rows, languages, report, out_dir, shard_size, id_prefix, "id-aligned", exclude_heldout, seed)


def _row_languages(languages: Sequence[str] | None, path: Any) -> Sequence[str]:
    if not languages:
        raise InputError(f"rows from {path}: name the languages every row must hold (--languages)")
    return languages


def _rows_from_objects(objects: Iterable[dict[str, Any]], where: str, report: FilterReport) -> Iterator[RawRow]:
    for number, obj in enumerate(objects):
        query, passage = obj.get("query"), obj.get("passage")
        if not isinstance(query, dict) or not isinstance(passage, dict):
            report.read_error(where, "missing_field")
            continue
        key = obj.get("id")
        yield RawRow(str(key) if key not in (None, "") else str(number), query, passage)
