"""Readers for the corpus formats the converters accept. Each yields raw pairs or rows and reports what it could not
read (a line without a tab, invalid UTF-8, an id with no text) in the `FilterReport`, naming the file.

Line-based files (TSV, JSONL) are read by `read_lines`: plain, or gzip / bz2 / xz by suffix; CRLF or LF line ends;
a line of invalid UTF-8 or longer than `MAX_LINE_BYTES` is skipped and counted (`invalid_utf8`, `line_too_long`; a
long line is never held whole in memory); a compressed file that ends early keeps the lines before the break and is
counted `truncated_compressed` (`corrupt_compressed` for bad data), with a note saying where it stopped.

- sentence-transformers parallel-sentences: `{root}/{corpus}/{corpus}-en-{lang}-train.tsv.gz`, lines `english\\tother`;
- JSONL: one pair (`lang`, `text`, `en`) or one row (`query`, `passage` maps) per line;
- HF datasets saved with `save_to_disk`: the same fields as columns;
- ID-aligned collections (mMARCO style): per-language query and passage TSVs (`id\\ttext`) joined over a pairs file.
gettext catalogues live in `mimo_ds.data.gettext`.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import zlib
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from mimo_ds.data.filters import FilterReport, RawPair
from mimo_ds.errors import InputError, MissingInput

# The 8 OPUS-based corpora of sentence-transformers/parallel-sentences, in the paper's dedup order.
PARALLEL_SENTENCES_CORPORA = (
    "Europarl", "GlobalVoices", "JW300", "News-Commentary", "OpenSubtitles", "Talks", "Tatoeba", "WikiMatrix",
)
# mMARCO file names use language names (and "dt" nowhere: Dutch is "dutch").
MMARCO_NAMES = {
    "ar": "arabic", "de": "german", "en": "english", "es": "spanish", "fr": "french", "hi": "hindi",
    "id": "indonesian", "it": "italian", "ja": "japanese", "nl": "dutch", "pt": "portuguese", "ru": "russian",
    "vi": "vietnamese", "zh": "chinese",
}


# Longer lines are skipped: no sentence or passage is a megabyte; a file without line ends (a binary, a wrong
# format) would otherwise be read into memory whole.
MAX_LINE_BYTES = 1 << 20
# A language code: ISO 639-1/-3 letters, optionally a script or region (zh-Hans, pt_BR). Codes outside a converter's
# `languages` (when it has them) are counted as unknown; codes not of this form always are.
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def is_language_code(code: Any) -> bool:
    return isinstance(code, str) and LANGUAGE_CODE.fullmatch(code) is not None


def _open(path: Path) -> IO[bytes]:
    return _OPENERS.get(path.suffix, open)(path, "rb")  # type: ignore[operator]


def _raw_lines(stream: IO[bytes], where: str, report: FilterReport) -> Iterator[bytes]:
    """Lines of at most MAX_LINE_BYTES (their end included); a longer one is skipped in pieces and counted."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(MAX_LINE_BYTES)
            report.read_error(where, "line_too_long")
            continue
        yield line


def read_lines(path: Path, report: FilterReport) -> Iterator[str]:
    """The decoded lines of a text file (see the module docstring for what is skipped and counted)."""
    where, number = str(path), 0
    if path.suffix in _OPENERS and path.stat().st_size == 0:  # gzip would read it as no lines at all
        report.read_error(where, "truncated_compressed")
        report.notes.append(f"{path}: the compressed stream ends early: the file is empty (0 bytes)")
        return
    stream = _open(path)  # a missing file raises here, not as bad data below
    try:
        with stream:
            for raw in _raw_lines(stream, where, report):
                number += 1
                try:
                    yield raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    report.read_error(where, "invalid_utf8")
    except EOFError as exc:
        report.read_error(where, "truncated_compressed")
        report.notes.append(f"{path}: the compressed stream ends early; stopped after line {number}: {exc}")
    except (OSError, zlib.error, lzma.LZMAError) as exc:
        report.read_error(where, "corrupt_compressed")
        report.notes.append(f"{path}: unreadable compressed data; stopped after line {number}: {exc}")


def parallel_sentences_files(
    root: str | os.PathLike[str], languages: Sequence[str], corpora: Sequence[str] = PARALLEL_SENTENCES_CORPORA,
) -> list[tuple[str, str, Path]]:
    """(corpus, language, path) of every `{corpus}-en-{lang}-train.tsv.gz` present, corpora first then languages (the
    dedup order). A language asked for without any file is an error naming it, not a language silently absent."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"{root}: no such folder (the parallel-sentences root holds one folder per corpus)")
    files = [(corpus, lang, root / corpus / f"{corpus}-en-{lang}-train.tsv.gz")
             for corpus in corpora for lang in languages if lang != "en"]
    files = [(corpus, lang, path) for corpus, lang, path in files if path.is_file()]
    found = {lang for _, lang, _ in files}
    if missing := [lang for lang in languages if lang != "en" and lang not in found]:
        raise MissingInput(f"no {{corpus}}/{{corpus}}-en-{{lang}}-train.tsv.gz under {root} for the language(s) "
                           f"{', '.join(missing)} (corpora {', '.join(corpora)})")
    return files


def read_parallel_sentences(
    root: str | os.PathLike[str], languages: Sequence[str], report: FilterReport,
    corpora: Sequence[str] = PARALLEL_SENTENCES_CORPORA,
) -> Iterator[RawPair]:
    """Pairs from every `{corpus}-en-{lang}-train.tsv.gz` present (see `parallel_sentences_files`, checked now, before
    the first pair is asked for)."""
    return _parallel_pairs(parallel_sentences_files(root, languages, corpora), report)


def _parallel_pairs(files: list[tuple[str, str, Path]], report: FilterReport) -> Iterator[RawPair]:
    for corpus, lang, path in files:
        for line in read_lines(path, report):
            fields = line.split("\t")
            if len(fields) != 2:
                report.read_error(str(path), "not_two_columns")
                continue
            yield RawPair(lang, fields[0], fields[1], corpus)


def check_file(path: Path) -> Path:
    """An input file, or a UserError naming it: checked when a reader is called, before any output is made."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; a file was expected")
    if not path.is_file():
        raise MissingInput(f"{path} not found")
    return path


def _json_lines(path: Path, report: FilterReport) -> Iterator[dict[str, Any]]:
    return _json_objects(check_file(path), report)


def _json_objects(path: Path, report: FilterReport) -> Iterator[dict[str, Any]]:
    for line in read_lines(path, report):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            report.read_error(str(path), "bad_json")
            continue
        if not isinstance(obj, dict):
            report.read_error(str(path), "not_object")
            continue
        yield obj


def pairs_from_objects(
    objects: Iterator[dict[str, Any]], where: str, report: FilterReport,
    lang: str | None = None, fields: tuple[str, str, str] = ("lang", "text", "en"),
    languages: Sequence[str] | None = None,
) -> Iterator[RawPair]:
    """Pairs from dict-like records; `lang` fixes the language when the records carry none. A code that is not a
    language code, or (with `languages`) not one of them, is counted as `unknown_language`."""
    lang_field, text_field, en_field = fields
    for obj in objects:
        code = lang or obj.get(lang_field)
        text, en = obj.get(text_field), obj.get(en_field)
        if not isinstance(code, str) or not isinstance(text, str) or not isinstance(en, str):
            report.read_error(where, "missing_field")
            continue
        if not is_language_code(code) or (languages and code not in languages):
            report.read_error(where, "unknown_language")
            continue
        yield RawPair(code, en, text, obj.get("source") if isinstance(obj.get("source"), str) else None)


def read_jsonl_pairs(path: str | os.PathLike[str], report: FilterReport, **kw: Any) -> Iterator[RawPair]:
    return pairs_from_objects(_json_lines(Path(path), report), str(path), report, **kw)


def read_jsonl_rows(path: str | os.PathLike[str], report: FilterReport) -> Iterator[dict[str, Any]]:
    """Rows as written (`query`, `passage`, optional `id`); the row builder checks and numbers them."""
    return _json_lines(Path(path), report)


def read_hf_disk(path: str | os.PathLike[str], split: str = "train") -> Iterator[dict[str, Any]]:
    """Records of a `datasets.save_to_disk` folder (a Dataset, or `split` of a DatasetDict), streamed row by row;
    the folder is opened now, so a wrong one is refused before any output is made."""
    import datasets

    if not Path(path).is_dir():
        raise MissingInput(f"{path}: no such folder (a folder written by datasets' save_to_disk)")
    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:  # datasets' word for a folder that save_to_disk did not write
        raise InputError(f"{path}: not a saved HF dataset ({exc})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise InputError(f"{path} has splits {list(data)}, not {split!r} (--split)")
        data = data[split]
    return iter(data)


def _read_id_tsv(path: Path, report: FilterReport) -> dict[str, str]:
    """id → text; a repeated id keeps its first text (counted `duplicate_id`)."""
    table: dict[str, str] = {}
    for line in read_lines(path, report):
        key, sep, text = line.partition("\t")
        if not sep:
            report.read_error(str(path), "not_two_columns")
        elif key in table:
            report.read_error(str(path), "duplicate_id")
        else:
            table[key] = text
    return table


def read_id_aligned_rows(
    root: str | os.PathLike[str], languages: Sequence[str], report: FilterReport,
    queries: str = "google/queries/train/{name}_queries.train.tsv",
    passages: str = "google/collections/{name}_collection.tsv",
    pairs: str = "triples.train.ids.small.tsv",
) -> Iterator[tuple[str, str, dict[str, str], dict[str, str]]]:
    """(qid, pid, query by language, passage by language) for each unique (qid, positive pid) of the pairs file.

    Paths are relative to `root`; `{lang}` is our code, `{name}` the mMARCO language name. The pairs file's first two
    columns are taken (a qrels-like `qid pid` file or mMARCO's `qid pid_pos pid_neg` triples). A pair missing in a
    language is reported under that language and skipped: rows must be parallel.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"{root}: no such folder (the id-aligned root)")
    try:
        names = {lang: (queries.format(lang=lang, name=MMARCO_NAMES.get(lang, lang)),
                        passages.format(lang=lang, name=MMARCO_NAMES.get(lang, lang))) for lang in languages}
    except (KeyError, IndexError, ValueError) as exc:  # str.format: an unknown {field} or a stray brace
        raise InputError(f"--queries {queries!r} / --passages {passages!r}: a pattern may hold only {{lang}} and "
                         f"{{name}} ({type(exc).__name__}: {exc})") from None
    query_files = {lang: check_file(root / q) for lang, (q, _) in names.items()}
    passage_files = {lang: check_file(root / p) for lang, (_, p) in names.items()}
    return _id_aligned_rows(query_files, passage_files, check_file(root / pairs), languages, report)


def _id_aligned_rows(
    query_files: dict[str, Path], passage_files: dict[str, Path], pairs_path: Path, languages: Sequence[str],
    report: FilterReport,
) -> Iterator[tuple[str, str, dict[str, str], dict[str, str]]]:
    query_text = {lang: _read_id_tsv(path, report) for lang, path in query_files.items()}
    passage_text = {lang: _read_id_tsv(path, report) for lang, path in passage_files.items()}
    seen: set[tuple[str, str]] = set()
    for line in read_lines(pairs_path, report):
        cols = line.split()
        if len(cols) < 2:
            report.read_error(str(pairs_path), "not_two_columns")
            continue
        qid, pid = cols[0], cols[1]
        if (qid, pid) in seen:  # mMARCO's triples repeat a positive pair once per negative
            report.read_error(str(pairs_path), "repeated_pair")
            continue
        seen.add((qid, pid))
        missing = [l for l in languages if qid not in query_text[l] or pid not in passage_text[l]]
        if missing:
            for lang in missing:
                report.drop(lang, "missing_translation")
            continue
        yield qid, pid, {l: query_text[l][qid] for l in languages}, {l: passage_text[l][pid] for l in languages}
