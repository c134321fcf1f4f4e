"""Benchmark folders on local disk: corpus, queries and qrels with a language on every document and query.

One reader for every layout we accept (see docs/evaluation.md): JSONL files (BEIR-style flat records, or the
one-key records `{id: {...}}` of the MIMO/SHIFT builders), a BEIR `qrels.tsv`, or HF datasets saved with
`save_to_disk`. Everything is checked on load, before any encoding starts, and every error names the file and the
record, because a benchmark that is silently half-read gives numbers that look fine and mean nothing.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Container, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from mimo_ds.errors import InputError

Protocol = Literal["mlir", "multi-monolingual"]
PROTOCOLS: tuple[str, ...] = ("mlir", "multi-monolingual")
META_FILE = "benchmark.json"


class BenchmarkError(InputError):
    """A benchmark folder that cannot be evaluated as it stands; the message names the file and record."""


@dataclass(frozen=True)
class Record:
    """A document or a query. `group` ties parallel versions (translations) of one passage or question together."""

    id: str
    text: str
    lang: str
    group: str | None = None


@dataclass
class Benchmark:
    """A loaded benchmark. `qrels[query_id][doc_id]` is a graded relevance (> 0 relevant)."""

    name: str
    protocol: Protocol
    corpus: list[Record]
    queries: list[Record]
    qrels: dict[str, dict[str, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise BenchmarkError(f"benchmark {self.name!r}: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        _check_unique(self.corpus, f"benchmark {self.name!r} corpus")
        _check_unique(self.queries, f"benchmark {self.name!r} queries")
        check_qrels(self.qrels, {q.id for q in self.queries}, {d.id for d in self.corpus},
                    f"benchmark {self.name!r} qrels")

    @property
    def languages(self) -> list[str]:
        return sorted({r.lang for r in self.corpus} | {r.lang for r in self.queries})


def check_qrels(qrels: Mapping[str, Iterable[str]], query_ids: Container[str], doc_ids: Container[str], where: str,
                *, docs: str = "doc id", corpus: str = "the corpus") -> None:
    """Every judged query must be among the queries and every judged id among the documents (`docs`, `corpus`
    name them in the error: built benchmarks judge doc ids, builders judge passage ids of their parallel material)."""
    for qid, judged in qrels.items():
        if qid not in query_ids:
            raise BenchmarkError(f"{where}: query id {qid!r} is not among the queries")
        for did in judged:
            if did not in doc_ids:
                raise BenchmarkError(f"{where}: query {qid!r} judges {docs} {did!r}, which is not in {corpus}")


def _check_unique(records: list[Record], where: str) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise BenchmarkError(f"{where}: duplicate id {r.id!r}")
        seen.add(r.id)


# ---------------------------------------------------------------------------------------------------------- reading

def _find(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """The one file (or saved HF dataset folder) for `stem`; an error lists what was looked for."""
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    tried = ", ".join(f"{stem}{s}" if s else f"{stem}/ (HF dataset)" for s in suffixes)
    raise BenchmarkError(f"{folder}: no {stem} found (looked for {tried})")


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) pairs from a JSONL file, a TSV file or an HF dataset saved to disk."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:  # datasets' word for "not a folder save_to_disk wrote"
            raise BenchmarkError(f"{path}: not a saved HF dataset ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise BenchmarkError(f"{path}: a DatasetDict with splits {list(ds)}; save the one split to use")
            ds = next(iter(ds.values()))
        for i, row in enumerate(ds):
            yield f"{path}[{i}]", row
    elif path.suffix == ".tsv":
        with _text(path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
                yield f"{path}:{i}", row
    else:
        with _text(path) as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise BenchmarkError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{i}", row


@contextmanager
def _text(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A UTF-8 text file whose decoding errors name the file: a benchmark is never half read."""
    with path.open(encoding="utf-8", newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError as exc:
            raise BenchmarkError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None


def _unkey(row: dict[str, Any]) -> dict[str, Any]:
    """`{"d1": {"text": .., "lang": ..}}` (MIMO/SHIFT one-key records) → `{"_id": "d1", "text": .., "lang": ..}`."""
    if "_id" not in row and "id" not in row and len(row) == 1:
        (key, value), = row.items()
        if isinstance(value, dict):
            return {"_id": key, **value}
    return row


def _read_records(path: Path, group_pattern: re.Pattern[str] | None) -> list[Record]:
    records = []
    for where, raw in _rows(path):
        row = _unkey(raw)
        rid = row.get("_id", row.get("id"))
        text, lang = row.get("text"), row.get("lang")
        if rid is None or str(rid) == "":
            raise BenchmarkError(f"{where}: record without an id (`_id` or `id`)")
        if not isinstance(text, str):
            raise BenchmarkError(f"{where}: record {rid!r} has no text")
        if not isinstance(lang, str) or not lang:
            raise BenchmarkError(f"{where}: record {rid!r} has no language (`lang`)")
        title = row.get("title")
        if isinstance(title, str) and title.strip():
            text = f"{title.strip()} {text}"
        group = row.get("group")
        if group is None and group_pattern is not None:
            match = group_pattern.fullmatch(str(rid))
            group = match.group("group") if match else None
        records.append(Record(str(rid), text, lang, None if group is None else str(group)))
    return records


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for where, row in _rows(path):
        qid = row.get("query_id", row.get("query-id"))
        did = row.get("doc_id", row.get("corpus-id", row.get("corpus_id")))
        if qid is not None and did is not None:
            triples = [(qid, did, row.get("score", 1))]
        elif len(row) == 1 and isinstance(next(iter(row.values())), dict):  # {qid: {did: rel}}
            (qid, docs), = row.items()
            triples = [(qid, d, s) for d, s in docs.items()]
        else:
            raise BenchmarkError(f"{where}: qrels record needs query_id, doc_id (and score), or {{qid: {{did: rel}}}}")
        for qid, did, score in triples:
            try:
                rel = int(float(score))
            except (TypeError, ValueError):
                raise BenchmarkError(f"{where}: relevance {score!r} of ({qid!r}, {did!r}) is not a number") from None
            qrels.setdefault(str(qid), {})[str(did)] = rel
    return qrels


def load_benchmark(folder: str | Path) -> Benchmark:
    """Read and check one benchmark folder (layout in docs/evaluation.md)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: benchmark folder not found")
    meta: dict[str, Any] = {}
    if (folder / META_FILE).exists():
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BenchmarkError(f"{folder / META_FILE}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise BenchmarkError(f"{folder / META_FILE}: expected a JSON object, got {type(meta).__name__}")
    patterns = {}
    for role in ("doc", "query"):
        pattern = meta.get(f"{role}_group_pattern")
        try:
            patterns[role] = re.compile(pattern) if pattern else None
        except (re.error, TypeError) as exc:
            raise BenchmarkError(f"{folder / META_FILE}: {role}_group_pattern {pattern!r} is not a regex "
                                 f"({exc})") from None
        if pattern and "group" not in patterns[role].groupindex:
            raise BenchmarkError(f"{folder / META_FILE}: {role}_group_pattern {pattern!r} needs a named group "
                                 "(?P<group>...)")
    corpus_path = _find(folder, "corpus", (".jsonl", ""))
    queries_path = _find(folder, "queries", (".jsonl", ""))
    qrels_path = _find(folder, "qrels", (".jsonl", ".tsv", ""))
    corpus = _read_records(corpus_path, patterns["doc"])
    queries = _read_records(queries_path, patterns["query"])
    qrels = _read_qrels(qrels_path)
    for what, path, items in (("documents", corpus_path, corpus), ("queries", queries_path, queries),
                              ("judgements", qrels_path, qrels)):
        if not items:
            raise BenchmarkError(f"{path}: no {what}; a benchmark needs documents, queries and qrels")
    # Re-raise with the file names, which the in-memory check does not know.
    try:
        return Benchmark(meta.get("name", folder.name), meta.get("protocol", "mlir"), corpus, queries, qrels, meta)
    except BenchmarkError as exc:
        raise BenchmarkError(f"{folder} ({corpus_path.name}, {queries_path.name}, {qrels_path.name}): {exc}") from None


# ---------------------------------------------------------------------------------------------------------- writing

def write_benchmark(bench: Benchmark, out_dir: str | Path) -> Path:
    """Write `bench` as JSONL (corpus.jsonl, queries.jsonl, qrels.jsonl) plus benchmark.json; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem, records in (("corpus", bench.corpus), ("queries", bench.queries)):
        with (out / f"{stem}.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                row = {"_id": r.id, "text": r.text, "lang": r.lang}
                if r.group is not None:
                    row["group"] = r.group
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (out / "qrels.jsonl").open("w", encoding="utf-8") as f:
        for qid, docs in bench.qrels.items():
            for did, rel in docs.items():
                f.write(json.dumps({"query_id": qid, "doc_id": did, "score": rel}, ensure_ascii=False) + "\n")
    meta = {**bench.meta, "name": bench.name, "protocol": bench.protocol, "languages": bench.languages,
            "n_docs": len(bench.corpus), "n_queries": len(bench.queries)}
    for role in ("doc", "query"):
        meta.pop(f"{role}_group_pattern", None)  # groups are now written explicitly
    (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
