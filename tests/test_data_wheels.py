"""The wheels' catalogues as training data: survey, the reserved wheels, the held-out split, counts in the index."""

import json
from pathlib import Path

import pytest

from mimo_ds.data import wheels
from mimo_ds.data.shards import iter_shard, read_index
from mimo_ds.data.splits import is_heldout
from mimo_ds.eval.benchmark import load_benchmark
from mimo_ds.eval.mini import build_wheels_benchmark

LANGS = ("en", "de", "ja", "zh")


def _records(folder):
    index = read_index(folder)
    return [m.record for shard in index.shards for m in iter_shard(index.path(shard))]


def test_every_demo_source_is_installed_and_translated():
    found = wheels.survey(wheels.DEMO_SOURCES, [lang for lang in wheels.DEMO_LANGUAGES if lang != "en"])
    for name in wheels.DEMO_SOURCES:
        assert found[name], f"{name}: no catalogue found (is its wheel installed?)"
        assert all(counts["entries"] > 0 for counts in found[name].values())


@pytest.mark.parametrize("reserved", wheels.RESERVED)
def test_reserved_wheels_are_never_read(tmp_path, reserved):
    po = tmp_path / "site-packages" / reserved / "locale" / "de" / "LC_MESSAGES" / "django.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid "Save"\nmsgstr "Speichern"\n')
    with pytest.raises(wheels.ReservedCatalogueError, match="reserved"):
        wheels.check_not_reserved([po])


def test_pairs_rows_and_benchmark_never_share_a_text(tmp_path):
    pairs = wheels.build_pairs(tmp_path / "pairs", wheels.DEMO_SOURCES, LANGS, cap_per_language=40, seed=7)
    rows = wheels.build_rows(tmp_path / "rows", wheels.DEMO_SOURCES, LANGS, seed=7)
    bench = load_benchmark(build_wheels_benchmark(tmp_path / "bench", wheels.DEMO_SOURCES, LANGS))
    pair_records, row_records = _records(tmp_path / "pairs"), _records(tmp_path / "rows")
    assert not any(is_heldout(r["en"]) for r in pair_records)
    assert not any(is_heldout(r["passage"]["en"]) for r in row_records)
    english_docs = {d.text for d in bench.corpus if d.lang == "en"}
    assert english_docs and all(is_heldout(t) for t in english_docs)
    train_texts = {r["text"] for r in pair_records} | {t for r in row_records for t in r["passage"].values()}
    assert not train_texts & {d.text for d in bench.corpus}
    assert bench.meta["exclude_self"] is True

    index = json.loads(Path(pairs).read_text())
    assert index["language_counts"] == {lang: 40 for lang in LANGS}  # capped, identity pairs included
    by_source = index["pairs_by_source"]
    assert set(by_source) <= set(wheels.DEMO_SOURCES) and len(by_source) > 1
    for lang in LANGS:
        assert sum(counts.get(lang, 0) for counts in by_source.values()) == 40
    assert index["filter_report"]["exclude_heldout"] is True
    row_index = json.loads(Path(rows).read_text())
    assert sum(row_index["rows_by_source"].values()) == row_index["total"] == len(row_records)
    assert row_index["row_languages"] == sorted(LANGS)
