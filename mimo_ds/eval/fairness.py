"""Language fairness of a multilingual ranking: MRC@k and PEER@k (definitions in docs/evaluation.md).

- MRC@k (mean rank correlation, Yang et al., MRL 2024): parallel queries should rank the corpus alike. For each
  group of parallel queries and each pair of its languages (a, b), the Spearman correlation of the two queries'
  scores over the union of their top-k documents; a language's RC is the mean over the other languages of the
  group, MRC(a) the mean over groups, MRC@k the mean over languages; reported ×100 (−100..100).
- PEER@k (Yang et al., SIGIR 2024): a query's relevant documents should be ranked alike whatever their language.
  Per query, a Kruskal–Wallis test of the relevant documents' ranks grouped by document language, each rank
  capped at k+1 (everything below the cut-off ties); PEER@k is the mean p-value (1 = no detectable bias).
Both need scores beyond the top k of one query, so they work on embeddings and the search's top-k indices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.special import chdtrc


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` with ties given their average rank: scipy's `rankdata(x)` for a 1-d float array, without
    its per-call argument handling, which dominated MRC's time (tens of thousands of short calls per evaluation)."""
    n = len(x)
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    first = np.empty(n, dtype=bool)  # where each run of equal values starts
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    ranks = np.empty(n)
    if first.all():  # no ties, the usual case for float scores
        ranks[order] = np.arange(1, n + 1)
        return ranks
    starts = np.flatnonzero(first)
    counts = np.diff(starts, append=n)
    ranks[order] = (starts + (counts + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (as scipy.stats.spearmanr); NaN when one side is constant."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def mean_rank_correlation(query_emb: np.ndarray, doc_emb: np.ndarray, top_idx: np.ndarray,
                          query_langs: Sequence[str], query_groups: Sequence[str | None], k: int,
                          ) -> tuple[float, dict[str, float]] | None:
    """(MRC@k, MRC@k per query language), both ×100; None when no group holds two languages.

    `top_idx[i]` lists query i's documents best first (at least k of them). Pairs whose scores are constant on
    the union (Spearman undefined) are skipped; in a group with two queries of one language, the first is used.
    """
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for i, (lang, group) in enumerate(zip(query_langs, query_groups)):
        if group is not None:
            groups[group].setdefault(lang, i)
    per_lang: dict[str, list[float]] = defaultdict(list)
    for members in groups.values():
        if len(members) < 2:
            continue
        langs = sorted(members)
        scores = dict(zip(langs, query_emb[[members[lang] for lang in langs]] @ doc_emb.T))  # once per group
        corr: dict[tuple[str, str], float] = {}
        for ai, a in enumerate(langs):
            for b in langs[ai + 1 :]:
                union = np.union1d(top_idx[members[a], :k], top_idx[members[b], :k])
                if len(union) >= 2:
                    corr[a, b] = corr[b, a] = _spearman(scores[a][union], scores[b][union])
        for a in langs:
            values = [corr[a, b] for b in langs if b != a and (a, b) in corr and not np.isnan(corr[a, b])]
            if values:
                per_lang[a].append(float(np.mean(values)))
    if not per_lang:
        return None
    by_lang = {lang: 100.0 * float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    return float(np.mean(list(by_lang.values()))), by_lang


def _kruskal_h(values: np.ndarray, groups: np.ndarray, n_groups: int) -> float:
    """Kruskal–Wallis H of `values` split by `groups` (codes 0..n_groups-1), tie-corrected as scipy.stats.kruskal;
    NaN when every value ties. Written out because scipy's per-call overhead was most of PEER's time (one test per
    query, hundreds per evaluation); the p-values come from one vectorised chi-square call."""
    n = len(values)
    ranks = _average_ranks(values)
    _, tie_counts = np.unique(values, return_counts=True)
    tie_factor = 1.0 - float((tie_counts ** 3 - tie_counts).sum()) / (n ** 3 - n)
    if tie_factor == 0:
        return float("nan")
    rank_sums = np.bincount(groups, weights=ranks, minlength=n_groups)
    sizes = np.bincount(groups, minlength=n_groups)
    h = 12.0 / (n * (n + 1)) * float((rank_sums ** 2 / sizes).sum()) - 3.0 * (n + 1)
    return h / tie_factor


def peer(top_idx: np.ndarray, relevant: Sequence[Sequence[int]], doc_langs: Sequence[str],
         query_langs: Sequence[str], k: int) -> tuple[float, dict[str, float]] | None:
    """(PEER@k, PEER@k per query language); None when no query has relevant documents in two languages.

    `relevant[i]` holds the corpus indices of query i's relevant documents. A query whose capped ranks are all
    equal (e.g. nothing relevant in the top k) shows no difference between languages: p = 1.
    """
    tested_langs: list[str] = []
    h_values: list[float] = []
    dofs: list[int] = []
    for i, rel in enumerate(relevant):
        if not rel:
            continue
        positions = {int(d): r + 1 for r, d in enumerate(top_idx[i, :k])}
        langs, groups = np.unique([doc_langs[d] for d in rel], return_inverse=True)
        if len(langs) < 2:
            continue
        capped = np.array([positions.get(int(d), k + 1) for d in rel], dtype=float)
        tested_langs.append(query_langs[i])
        h_values.append(_kruskal_h(capped, groups, len(langs)))
        dofs.append(len(langs) - 1)
    if not tested_langs:
        return None
    h = np.array(h_values)
    p_values = np.where(np.isnan(h), 1.0, chdtrc(np.array(dofs, dtype=float), np.nan_to_num(h)))
    per_lang: dict[str, list[float]] = defaultdict(list)
    for lang, p in zip(tested_langs, p_values.tolist()):
        per_lang[lang].append(p)
    by_lang = {lang: float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    overall = float(np.mean(p_values))
    return overall, by_lang
