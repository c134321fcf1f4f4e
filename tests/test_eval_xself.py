"""MLIR's exclude_self option and the own-language share, against hand-worked rankings."""

import numpy as np
import pytest
import torch

from mimo_ds.eval.benchmark import load_benchmark, write_benchmark
from mimo_ds.eval.builders import build_mlir, build_multi_monolingual
from mimo_ds.eval.runner import evaluate_benchmark, self_positions

LANGS = ["de", "en", "fr"]
N = 23  # groups; corpus order is p0-de, p0-en, p0-fr, p1-de, ...


def _material(n=N):
    passages = {f"p{i}": {lang: f"passage {i} in {lang}" for lang in LANGS} for i in range(n)}
    queries = {f"p{i}": {lang: f"question {i} in {lang}" for lang in LANGS} for i in range(n)}
    return passages, queries, {f"p{i}": [f"p{i}"] for i in range(n)}


def _meaning_encoder(seed: int):
    """Every translation of item i → one random unit vector (perfect alignment, ties broken by corpus order)."""
    vectors = torch.nn.functional.normalize(torch.randn(100, 16, generator=torch.Generator().manual_seed(seed)))
    return lambda texts, role: vectors[[int(t.split()[1]) for t in texts]]


def _language_encoder(texts, role):
    """One-hot language: every query ranks its own language first, meaning plays no part."""
    return torch.eye(len(LANGS))[[LANGS.index(t.split()[-1]) for t in texts]]


def test_self_positions_find_the_own_language_copy():
    bench = build_mlir(*_material(), name="m")
    for query, own in zip(bench.queries, self_positions(bench)):
        doc = bench.corpus[own]
        assert (doc.group, doc.lang) == (query.group, query.lang)


@pytest.mark.parametrize("seed", [0, 1])
def test_meaning_encoder_without_its_self_match(seed):
    res = evaluate_benchmark(build_mlir(*_material(), name="m"), _meaning_encoder(seed), batch_size=7,
                             exclude_self=True).metrics
    # The two other language versions tie with the own copy; without it they are ranks 1 and 2 of 2 relevant.
    for name in ("ndcg_at_20", "recall_at_10", "mrr_at_10"):
        assert res[f"xself/{name}"] == pytest.approx(1.0)
    # Top 20 without the own copy: 2 other versions, then 6 whole groups (one own-language document each).
    assert res["xself/own_language_share_at_20"] == pytest.approx(6 / 20)
    # With it: the group (1 own), 5 whole groups, then de and en of the next group (corpus order).
    for lang, own in (("de", 7), ("en", 7), ("fr", 6)):
        assert res[f"lang/{lang}/own_language_share_at_20"] == pytest.approx(own / 20)
    assert res["own_language_share_at_20"] == pytest.approx(20 / 60)
    assert res["own_language_blind_share"] == pytest.approx(N / (3 * N))
    assert res["xself/own_language_blind_share"] == pytest.approx((N - 1) / (3 * N - 1))


def test_language_encoder_finds_nothing_across_languages():
    res = evaluate_benchmark(build_mlir(*_material(), name="m"), _language_encoder, batch_size=8,
                             exclude_self=True).metrics
    assert res["xself/own_language_share_at_20"] == pytest.approx(1.0)
    assert res["xself/recall_at_20"] == pytest.approx(0.0)
    # After the other N−1 own-language documents, the other languages tie at 0 in corpus order: group i's two
    # versions sit at ranks N−1 + 2i + 1 and N−1 + 2i + 2.
    ideal = 1 / np.log2(2) + 1 / np.log2(3)
    expected = np.mean([sum(1 / np.log2(N - 1 + 2 * i + r + 1) for r in (1, 2) if N - 1 + 2 * i + r <= 100) / ideal
                        for i in range(N)])
    assert res["xself/ndcg_at_100"] == pytest.approx(expected)
    assert "ndcg_at_20" in res and "mrc_at_10" in res  # the paper's protocol is still reported


def test_benchmark_folder_turns_it_on(tmp_path):
    bench = build_mlir(*_material(), name="m")
    plain = evaluate_benchmark(bench, _meaning_encoder(0), batch_size=8).metrics
    assert not any(name.startswith("xself/") for name in plain)
    bench.meta["exclude_self"] = True
    loaded = load_benchmark(write_benchmark(bench, tmp_path / "m"))
    assert "xself/ndcg_at_20" in evaluate_benchmark(loaded, _meaning_encoder(0), batch_size=8).metrics


def test_exclude_self_is_an_mlir_option():
    with pytest.raises(ValueError, match="option of the mlir protocol"):
        evaluate_benchmark(build_multi_monolingual(*_material(), name="mm"), _meaning_encoder(0), exclude_self=True)
