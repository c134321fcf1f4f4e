"""One benchmark, end to end: encode (collectively), search, then retrieval, fairness and geometry metrics.

Metric names are flat and free of `@` (MLflow refuses it): `ndcg_at_20`, `lang/de/ndcg_at_20` (queries in German),
`pair/de-en/ndcg_at_20` (German queries judged only on the English versions of their gold, ranked in the whole
pooled corpus), `mrc_at_10`, `peer_at_20`, `alignment`, `uniformity`, `language_clustering`. Overall retrieval
numbers are the mean over queries for MLIR and the mean over languages for multi-monolingual (MIRACL's convention).

MLIR's `exclude_self` option (`evaluate_benchmark(exclude_self=True)`, or `"exclude_self": true` in benchmark.json)
adds the same retrieval metrics under `xself/` with each query's own-language copy of its passage (the document of
the query's group in the query's language) taken out of the ranking and out of the relevant set: in a benchmark whose
queries are parts of its documents, that copy is a near-duplicate every model ranks first, which rewards matching
the query's own language and hides how well the other language versions are found. With it come
`xself/own_language_share_at_20` (the share of each query's top 20 in the query's language, per query language
under `xself/lang/<a>/`) and `xself/own_language_blind_share` (what a language-blind ranking would give).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mimo_ds.errors import InputError
from mimo_ds.eval.benchmark import Benchmark
from mimo_ds.eval.encoding import EncodeFn, encode_all
from mimo_ds.eval.fairness import mean_rank_correlation, peer
from mimo_ds.eval.geometry import LanguageClustering, alignment, language_clustering, uniformity
from mimo_ds.eval.metrics import mean_by, per_query_metrics, restrict_qrels
from mimo_ds.eval.search import distributed_top_k

K_VALUES = (10, 20, 100)
MRC_K = (5, 10, 20)
PEER_K = (20, 100)
CLUSTERING_K = 10
SHARE_K = 20  # own-language share of the top 20
XSELF = "xself/"


@dataclass
class BenchmarkResult:
    """Metrics (flat names, no benchmark prefix), facts about the run, and the clustering data for the figure."""

    name: str
    protocol: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    clustering: LanguageClustering | None = None


def _search_monolingual(bench: Benchmark, q: torch.Tensor, d: torch.Tensor, depth: int,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Multi-monolingual: each query searches only its own language's documents; (scores, corpus indices)."""
    hits: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0, dtype=np.int64))] * len(bench.queries)
    doc_lang = np.asarray([doc.lang for doc in bench.corpus])
    for lang in sorted({query.lang for query in bench.queries}):
        qi = [n for n, query in enumerate(bench.queries) if query.lang == lang]
        di = np.flatnonzero(doc_lang == lang)
        if len(di) == 0:
            continue
        s, i = distributed_top_k(q[qi], d[torch.from_numpy(di)], depth)
        for row, n in enumerate(qi):
            hits[n] = (s[row].numpy(), di[i[row].numpy()])
    return hits


def _retrieval(bench: Benchmark, hits: list[tuple[np.ndarray, np.ndarray]], k_values: Sequence[int],
               per_pair: bool, qrels: dict[str, dict[str, int]] | None = None) -> dict[str, float]:
    qrels = bench.qrels if qrels is None else qrels
    run = {query.id: {bench.corpus[int(j)].id: float(s) for s, j in zip(scores, idx)}
           for query, (scores, idx) in zip(bench.queries, hits)}
    qlang = {query.id: query.lang for query in bench.queries}
    per_query = per_query_metrics(run, qrels, k_values)
    by_lang = mean_by(per_query, qlang)
    if bench.protocol == "mlir":
        overall = mean_by(per_query).get("", {})
    else:
        overall = {m: float(np.mean([v[m] for v in by_lang.values()])) for m in next(iter(by_lang.values()), {})}
    out = dict(overall)
    for lang, values in by_lang.items():
        out.update({f"lang/{lang}/{m}": v for m, v in values.items()})
    doc_langs = sorted({doc.lang for doc in bench.corpus})
    if per_pair and bench.protocol == "mlir" and len(doc_langs) > 1:
        for b in doc_langs:
            restricted = restrict_qrels(qrels, (doc.id for doc in bench.corpus if doc.lang == b))
            for a, values in mean_by(per_query_metrics(run, restricted, k_values), qlang).items():
                out.update({f"pair/{a}-{b}/{m}": v for m, v in values.items()})
    return out


def self_positions(bench: Benchmark) -> list[int | None]:
    """Per query, the corpus position of its own-language copy (same group, same language), None when it has none."""
    position = {(doc.group, doc.lang): n for n, doc in enumerate(bench.corpus) if doc.group is not None}
    return [position.get((query.group, query.lang)) if query.group is not None else None for query in bench.queries]


def drop_self(bench: Benchmark, hits: list[tuple[np.ndarray, np.ndarray]], depth: int,
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, dict[str, int]]]:
    """The `exclude_self` protocol: each query's own-language copy removed from its ranking (which is then cut to
    `depth`) and from its relevant documents."""
    selves = self_positions(bench)
    out_hits, qrels = [], {}
    for query, (scores, idx), own in zip(bench.queries, hits, selves):
        keep = idx != own if own is not None else np.ones(len(idx), dtype=bool)
        out_hits.append((scores[keep][:depth], idx[keep][:depth]))
        own_id = bench.corpus[own].id if own is not None else None
        qrels[query.id] = {did: rel for did, rel in bench.qrels.get(query.id, {}).items() if did != own_id}
    return out_hits, qrels


def own_language_share(bench: Benchmark, hits: list[tuple[np.ndarray, np.ndarray]], k: int = SHARE_K,
                       exclude_self: bool = False) -> dict[str, float]:
    """Share of each query's top k in the query's language: overall (`own_language_share_at_k`), per query language
    (`lang/<a>/...`), and what a language-blind ranking would give on average (`own_language_blind_share`: the
    query language's share of the corpus, the query's own copy left out under exclude_self)."""
    doc_lang = np.asarray([doc.lang for doc in bench.corpus])
    counts = {lang: int((doc_lang == lang).sum()) for lang in set(doc_lang.tolist())}
    shares: dict[str, list[float]] = {}
    blind = []
    drop = 1 if exclude_self else 0
    for query, (_, idx) in zip(bench.queries, hits):
        if len(idx) == 0:
            continue
        top = idx[:k]
        shares.setdefault(query.lang, []).append(float(np.mean(doc_lang[top] == query.lang)))
        blind.append((counts.get(query.lang, 0) - drop) / max(1, len(doc_lang) - drop))
    if not blind:
        return {}
    name = f"own_language_share_at_{k}"
    out = {name: float(np.mean([v for values in shares.values() for v in values])),
           "own_language_blind_share": float(np.mean(blind))}
    out.update({f"lang/{lang}/{name}": float(np.mean(v)) for lang, v in sorted(shares.items())})
    return out


def resolve_exclude_self(bench: Benchmark, exclude_self: bool | None) -> bool:
    """The `exclude_self` setting for `bench` (None: the benchmark's own), refused where the protocol has no
    query-language copy of the gold to exclude."""
    if exclude_self is None:
        exclude_self = bool(bench.meta.get("exclude_self", False))
    if exclude_self and bench.protocol != "mlir":
        raise InputError(f"benchmark {bench.name!r}: exclude_self is an option of the mlir protocol, "
                         f"not of {bench.protocol}")
    return exclude_self


def relevant_positions(bench: Benchmark) -> list[list[int]]:
    """Each query's relevant documents as corpus positions (PEER's input), in the benchmark's query order."""
    position = {doc.id: n for n, doc in enumerate(bench.corpus)}
    return [[position[did] for did, rel in bench.qrels.get(query.id, {}).items() if rel > 0]
            for query in bench.queries]


def evaluate_benchmark(bench: Benchmark, encode: EncodeFn, *, batch_size: int = 64,
                       k_values: Sequence[int] = K_VALUES, mrc_k: Sequence[int] = MRC_K,
                       peer_k: Sequence[int] = PEER_K, clustering_k: int = CLUSTERING_K, per_pair: bool = True,
                       exclude_self: bool | None = None, rank: int = 0, world_size: int = 1,
                       progress: bool = False) -> BenchmarkResult:
    """Evaluate `encode` on `bench`. Collective: every rank must call it; metrics are computed on rank 0 only
    (other ranks get a result with empty metrics). `exclude_self` (MLIR only; None: the benchmark's
    `exclude_self` setting) adds the `xself/` metrics (module doc)."""
    exclude_self = resolve_exclude_self(bench, exclude_self)
    t0 = time.perf_counter()
    kw = dict(batch_size=batch_size, rank=rank, world_size=world_size, progress=progress and rank == 0)
    d = encode_all(encode, [doc.text for doc in bench.corpus], "passage", **kw)
    q = encode_all(encode, [query.text for query in bench.queries], "query", **kw)
    t_encode = time.perf_counter() - t0
    depth = max([*k_values, *mrc_k, *peer_k, clustering_k, SHARE_K])
    result = BenchmarkResult(bench.name, bench.protocol, info={
        "protocol": bench.protocol, "languages": bench.languages, "n_docs": len(bench.corpus),
        "n_queries": len(bench.queries),
        "n_scored_queries": sum(any(r > 0 for r in docs.values()) for docs in bench.qrels.values()),
        "encode_s": round(t_encode, 3)})
    if bench.protocol == "mlir":  # collective: every rank searches a slice of the queries
        search_depth = depth + 1 if exclude_self else depth  # room to drop the query's own copy
        scores, top_idx = (t.numpy() for t in distributed_top_k(q, d, search_depth, rank=rank, world_size=world_size))
    if rank != 0:
        return result
    hits = list(zip(scores, top_idx)) if bench.protocol == "mlir" else _search_monolingual(bench, q, d, depth)
    if exclude_self:
        own_hits, own_qrels = drop_self(bench, hits, depth)
        xself = {**_retrieval(bench, own_hits, k_values, False, own_qrels),
                 **own_language_share(bench, own_hits, exclude_self=True)}
        result.info["xself_scored_queries"] = sum(any(r > 0 for r in docs.values()) for docs in own_qrels.values())
        hits = [(s[:depth], i[:depth]) for s, i in hits]
        top_idx = top_idx[:, :depth]
    metrics = _retrieval(bench, hits, k_values, per_pair)
    if bench.protocol == "mlir":
        metrics.update(own_language_share(bench, hits))
    if exclude_self:
        metrics.update({XSELF + name: value for name, value in xself.items()})
    doc_langs = [doc.lang for doc in bench.corpus]
    if bench.protocol == "mlir":
        qlangs = [query.lang for query in bench.queries]
        qn, dn = q.numpy(), d.numpy()
        for k in mrc_k:
            mrc = mean_rank_correlation(qn, dn, top_idx, qlangs, [query.group for query in bench.queries], k)
            if mrc is not None:
                metrics[f"mrc_at_{k}"] = mrc[0]
                metrics.update({f"lang/{lang}/mrc_at_{k}": v for lang, v in mrc[1].items()})
        relevant = relevant_positions(bench)
        for k in peer_k:
            p = peer(top_idx, relevant, doc_langs, qlangs, k)
            if p is not None:
                metrics[f"peer_at_{k}"] = p[0]
                metrics.update({f"lang/{lang}/peer_at_{k}": v for lang, v in p[1].items()})
        result.clustering = language_clustering(top_idx, qlangs, doc_langs, clustering_k)
        if result.clustering is not None:
            metrics.update(result.clustering.metrics())
    align = alignment(d, doc_langs, [doc.group for doc in bench.corpus])
    if align is not None:
        metrics["alignment"] = align
    unif = uniformity(d)
    if unif is not None:
        metrics["uniformity"] = unif
    result.metrics = metrics
    result.info["total_s"] = round(time.perf_counter() - t0, 3)
    return result
