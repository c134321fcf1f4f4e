"""MRC@k and PEER@k on hand-worked cases, MRC against a brute-force computation with scipy's spearmanr and PEER against
scipy's kruskal."""

import math
from collections import defaultdict

import numpy as np
import pytest
from scipy.stats import chi2, kruskal, rankdata, spearmanr

from mimo_ds.eval.fairness import _average_ranks, mean_rank_correlation, peer


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")


def test_mrc_hand_worked():
    # Documents are one-hot, so a query's scores are its row. k = 2.
    s = np.array([[.5, .4, .3, .2, .1],   # en   top-2 {0, 1}
                  [.4, .5, .3, .1, .2],   # de   top-2 {0, 1}
                  [.1, .2, .3, .4, .5],   # fr   top-2 {3, 4}
                  [.9, .8, .7, .6, .5]])  # en, other group alone: ignored
    # en-de on {0,1}: opposite orders, rho = -1. en-fr on {0,1,3,4}: reversed, rho = -1.
    # de-fr on {0,1,3,4}: de ranks (3,4,1,2), fr ranks (1,2,3,4): rho = 1 - 6*16/(4*15) = -0.6.
    mrc, by_lang = mean_rank_correlation(s, np.eye(5), _order(s), ["en", "de", "fr", "en"], ["g", "g", "g", "h"], 2)
    assert by_lang == pytest.approx({"de": -80.0, "en": -100.0, "fr": -80.0})
    assert mrc == pytest.approx(-260 / 3)


def test_mrc_identical_rankings_and_no_groups():
    s = np.tile(np.array([[.3, .9, .1, .5]]), (3, 1))
    assert mean_rank_correlation(s, np.eye(4), _order(s), ["a", "b", "c"], ["g"] * 3, 2)[0] == pytest.approx(100.0)
    assert mean_rank_correlation(s, np.eye(4), _order(s), ["a", "b", "c"], ["g", "h", None], 2) is None


def test_mrc_matches_scipy_bruteforce():
    rng = np.random.default_rng(3)
    n_groups, langs, n_docs, dim, k = 9, ["ar", "de", "en", "ja"], 37, 6, 5
    q = rng.normal(size=(n_groups * len(langs), dim))
    d = rng.normal(size=(n_docs, dim))
    d[5] = d[4]  # tied documents
    qlangs = [lang for _ in range(n_groups) for lang in langs]
    groups = [f"g{g}" for g in range(n_groups) for _ in langs]
    scores = q @ d.T
    top = _order(scores)
    per_lang = defaultdict(list)
    for g in range(n_groups):
        rows = {lang: g * len(langs) + i for i, lang in enumerate(langs)}
        for a in langs:
            rhos = []
            for b in langs:
                if a != b:
                    u = sorted(set(top[rows[a], :k]) | set(top[rows[b], :k]))
                    rhos.append(spearmanr(scores[rows[a], u], scores[rows[b], u]).statistic)
            per_lang[a].append(np.mean(rhos))
    expected = {lang: 100 * np.mean(v) for lang, v in per_lang.items()}
    mrc, by_lang = mean_rank_correlation(q, d, top, qlangs, groups, k)
    assert by_lang == pytest.approx(expected)
    assert mrc == pytest.approx(np.mean(list(expected.values())))


@pytest.mark.parametrize("n", [1, 2, 7, 33, 101])
def test_average_ranks_equal_scipys_rankdata_with_ties(n):
    rng = np.random.default_rng()
    for values in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float), np.full(n, 0.25)):
        np.testing.assert_array_equal(_average_ranks(values), rankdata(values))


def test_peer_hand_worked():
    k = 20
    doc_langs = ["en", "en", "de", "de", "fr"] + ["xx"] * 45
    # Query 0: en docs at ranks 1 and >k, de at 2 and >k, fr >k → capped values 1, 21 | 2, 21 | 21.
    # Pooled ranks 1, 2 and (3+4+5)/3 = 4 for the three 21s; rank sums en 5, de 6, fr 4; N = 5.
    # H = 12/(5*6) * (25/2 + 36/2 + 16/1) - 3*6 = 0.6; tie correction 1 - (3^3-3)/(5^3-5) = 0.8; H = 0.75.
    # Query 1: every relevant document beyond k: all ranks tie, p = 1. Query 2: one language only: skipped.
    order0 = [0, 2] + list(range(5, 50)) + [1, 3, 4]
    order1 = list(range(5, 50)) + [0, 1, 2, 3, 4]
    top = np.array([order0, order1, order1])
    relevant = [[0, 1, 2, 3, 4], [0, 2, 4], [0, 1]]
    overall, by_lang = peer(top, relevant, doc_langs, ["de", "en", "en"], k)
    p0 = chi2.sf(0.75, df=2)
    assert p0 == pytest.approx(math.exp(-0.375))
    assert by_lang == pytest.approx({"de": p0, "en": 1.0})
    assert overall == pytest.approx((p0 + 1.0) / 2)
    assert peer(top, [[0, 1], [], []], doc_langs, ["de", "en", "en"], k) is None


@pytest.mark.parametrize("k", [3, 20])
def test_peer_equals_scipys_kruskal_per_query(k):
    """Random rankings with odd sizes: each query's p-value is scipy.stats.kruskal's on the capped ranks grouped by
    document language (p = 1 where every rank ties), averaged overall and per query language."""
    rng = np.random.default_rng()
    n_docs, n_queries = 61, 37
    doc_langs = [str(lang) for lang in rng.choice(["de", "en", "fr", "sw"], size=n_docs)]
    query_langs = [str(lang) for lang in rng.choice(["de", "en", "ja"], size=n_queries)]
    top = np.stack([rng.permutation(n_docs)[:25] for _ in range(n_queries)])
    relevant = [list(rng.choice(n_docs, size=int(rng.integers(0, 9)), replace=False)) for _ in range(n_queries)]
    expected: dict[str, list[float]] = {}
    for i, rel in enumerate(relevant):
        positions = {int(d): r + 1 for r, d in enumerate(top[i, :k])}
        by_lang: dict[str, list[int]] = {}
        for d in rel:
            by_lang.setdefault(doc_langs[d], []).append(positions.get(int(d), k + 1))
        if len(by_lang) < 2:
            continue
        pooled = [r for ranks in by_lang.values() for r in ranks]
        p = 1.0 if len(set(pooled)) == 1 else float(kruskal(*by_lang.values()).pvalue)
        expected.setdefault(query_langs[i], []).append(p)
    overall, per_lang = peer(top, relevant, doc_langs, query_langs, k)
    assert per_lang == pytest.approx({lang: float(np.mean(v)) for lang, v in expected.items()}, rel=1e-9)
    assert overall == pytest.approx(float(np.mean([p for v in expected.values() for p in v])), rel=1e-9)
