"""End to end: oracle encoders on built benchmarks, the collective encode/search on 2 gloo ranks, the hook."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimo_ds.eval.builders import build_mlir, build_multi_monolingual
from mimo_ds.eval.encoding import encode_all
from mimo_ds.eval.hook import evaluate
from mimo_ds.eval.benchmark import write_benchmark
from mimo_ds.eval.runner import evaluate_benchmark
from mimo_ds.eval.search import distributed_top_k, top_k
from ports import free_port

LANGS = ["de", "en", "fr"]


def _material(n=23):
    passages = {f"p{i}": {lang: f"passage {i} in {lang}" for lang in LANGS} for i in range(n)}
    queries = {f"p{i}": {lang: f"question {i} in {lang}" for lang in LANGS} for i in range(n)}
    return passages, queries, {f"p{i}": [f"p{i}"] for i in range(n)}


class MeaningEncoder:
    """Maps every translation of item i (passage or question) to one random unit vector: perfect alignment."""

    def __init__(self, dim=16):
        self.vectors = torch.nn.functional.normalize(torch.randn(100, dim, generator=torch.Generator().manual_seed(0)))
        self.calls = []

    def encode(self, texts, role):
        self.calls.append((len(texts), role))
        return self.vectors[[int(t.split()[1]) for t in texts]]


class LanguageEncoder:
    """Embedding = one-hot language id: pure language clustering, no meaning."""

    def encode(self, texts, role):
        return torch.eye(len(LANGS))[[LANGS.index(t.split()[-1]) for t in texts]]


def test_meaning_encoder_is_perfect_on_mlir_and_multi_monolingual():
    enc = MeaningEncoder()
    res = evaluate_benchmark(build_mlir(*_material(), name="m"), enc.encode, batch_size=8)
    for name in ("ndcg_at_10", "ndcg_at_20", "recall_at_100", "mrr_at_10", "map_at_100",
                 "lang/fr/ndcg_at_20", "pair/fr-de/ndcg_at_20", "pair/fr-en/recall_at_10"):
        assert res.metrics[name] == pytest.approx(1.0), name
    # The three versions tie; corpus order (de, en, fr) decides, so the French version alone sits at rank 3.
    assert res.metrics["pair/de-fr/ndcg_at_20"] == pytest.approx(1 / np.log2(4))
    assert res.metrics["alignment"] == pytest.approx(0.0, abs=1e-9)
    assert res.metrics["mrc_at_10"] == pytest.approx(100.0)
    assert all(n <= 8 for n, _ in enc.calls)
    mono = evaluate_benchmark(build_multi_monolingual(*_material(), name="mm"), enc.encode, batch_size=8)
    assert mono.metrics["ndcg_at_20"] == pytest.approx(1.0)
    assert "language_clustering" not in mono.metrics


def test_language_encoder_shows_full_clustering():
    res = evaluate_benchmark(build_mlir(*_material(), name="m"), LanguageEncoder().encode, batch_size=16)
    assert res.metrics["language_clustering"] == pytest.approx(1.0)
    assert all(res.metrics[f"lang/{lang}/own_language_share"] == 1.0 for lang in LANGS)
    assert res.metrics["ndcg_at_20"] < 0.5
    assert res.metrics["alignment"] == pytest.approx(2.0)  # orthogonal unit vectors: ‖x − y‖² = 2


def test_top_k_chunked_with_ties():
    q, d = torch.randn(13, 4), torch.randn(50, 4)
    d[30] = d[7]  # exact tie: the earlier document must come first
    q[0] = d[7]
    s, i = top_k(q, d, 9, query_chunk=4, doc_chunk=6)
    full = q @ d.T
    ref_i = torch.from_numpy(np.argsort(-full.numpy(), axis=1, kind="stable")[:, :9])
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, full.gather(1, ref_i))


def _worker(rank, world, port, texts, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    enc = MeaningEncoder()
    emb = encode_all(enc.encode, texts, "passage", batch_size=2, rank=rank, world_size=world)
    s, i = distributed_top_k(emb[:5], emb, 4, rank=rank, world_size=world)
    torch.save({"calls": enc.calls, "emb": emb, "s": s, "i": i}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_collective_encode_and_search_on_two_ranks(tmp_path):
    texts = [f"t {i} " + "x" * (i * 7 % 11) for i in range(7)]  # 7 texts: rank slices must be padded
    mp.spawn(_worker, args=(2, free_port(), texts, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["calls"] == r1["calls"] == [(2, "passage"), (2, "passage")]  # same calls, same sizes
    ref = MeaningEncoder().encode(texts, "passage")
    torch.testing.assert_close(r0["emb"], ref)
    torch.testing.assert_close(r1["emb"], ref)
    s, i = top_k(ref[:5], ref, 4)
    assert torch.equal(r0["i"], i) and torch.equal(r1["i"], i)


def test_hook_flat_names(tmp_path):
    write_benchmark(build_mlir(*_material(7), name="toy"), tmp_path / "toy")
    out = evaluate(MeaningEncoder().encode, [tmp_path / "toy"], batch_size=5)
    assert out["toy/ndcg_at_20"] == pytest.approx(1.0)
    assert {"toy/alignment", "toy/uniformity", "toy/mrc_at_5", "toy/peer_at_20", "toy/lang/de/ndcg_at_20"} <= set(out)
    assert not any("@" in name or "/pair/" in name for name in out)
    with pytest.raises(ValueError, match="names must differ"):
        evaluate(MeaningEncoder().encode, [tmp_path / "toy", tmp_path / "toy"], batch_size=5)


@pytest.mark.parametrize("st_name", ["mean", "cls", "max", "lasttoken"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_matches_sentence_transformers(st_name, side):
    """Evaluation pools with the training `pool`; each sentence-transformers mode (lasttoken → last) agrees with ST."""
    Pooling = pytest.importorskip("sentence_transformers.sentence_transformer.modules").Pooling
    from mimo_ds.models.pooling import pool, pooling_mode

    hidden = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    lengths = [5, 3, 1]
    mask = torch.zeros(3, 5, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 5 - n:] = 1
    ref = Pooling(4, pooling_mode=st_name)({"token_embeddings": hidden, "attention_mask": mask})
    ours = pool(hidden, mask, pooling_mode(st_name))
    torch.testing.assert_close(ours, ref["sentence_embedding"])


def test_st_folder_pooling_names(tmp_path):
    from mimo_ds.eval.encoding import read_st_folder

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text('[{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]')
    (tmp_path / "1_Pooling/config.json").write_text('{"pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false}')
    assert read_st_folder(tmp_path)["pooling"] == "last"
    (tmp_path / "1_Pooling/config.json").write_text('{"pooling_mode_max_tokens": true}')
    assert read_st_folder(tmp_path)["pooling"] == "max"
    (tmp_path / "1_Pooling/config.json").write_text('{"pooling_mode_max_tokens": true, "pooling_mode_cls_token": true}')
    with pytest.raises(ValueError, match="exactly one"):
        read_st_folder(tmp_path)
