"""Vocabulary trimming keeps a Unigram encoder identical on the corpus it was trimmed for."""

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from mimo_ds.models.trim import full_config, special_id_fields, trim_model

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _tiny_model(folder, seed):
    """A random tiny XLM-R with a Unigram vocabulary of single letters and random longer pieces (with scores)."""
    rng = random.Random(seed)
    letters = "abcdefghij"
    pieces = {p for p in (f"▁{c}" for c in letters)} | set(letters)
    while len(pieces) < 140:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 4)))
        pieces.add(word if rng.random() < 0.5 else "▁" + word)
    vocab = [(s, 0.0) for s in SPECIALS] + [(p, -rng.uniform(1, 12)) for p in sorted(pieces)] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", model_max_length=64)
    torch.manual_seed(seed)
    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=48, max_position_embeddings=70,
                                             pad_token_id=1, bos_token_id=0, eos_token_id=2))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return rng


def _texts(rng, n, letters):
    return [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 6)))
            for _ in range(n)]


@pytest.mark.parametrize("seed", [3, 11])
def test_trimmed_model_is_identical_on_its_corpus(tmp_path, seed):
    rng = _tiny_model(tmp_path / "full", seed)
    corpus = _texts(rng, 37, "abcdef")  # uses part of the vocabulary only
    sizes = trim_model(tmp_path / "full", corpus, tmp_path / "trim")
    assert sizes["vocab_after"] < sizes["vocab_before"]
    full_tok, trim_tok = AutoTokenizer.from_pretrained(tmp_path / "full"), AutoTokenizer.from_pretrained(tmp_path / "trim")
    full, trim = AutoModel.from_pretrained(tmp_path / "full").eval(), AutoModel.from_pretrained(tmp_path / "trim").eval()
    assert trim.get_input_embeddings().weight.shape[0] == sizes["vocab_after"] == len(trim_tok)
    pieces = lambda tok, text: tok.convert_ids_to_tokens(tok(text)["input_ids"])  # noqa: E731
    for text in corpus:
        assert pieces(trim_tok, text) == pieces(full_tok, text)
    with torch.no_grad():
        a = full(**full_tok(corpus, padding=True, return_tensors="pt")).last_hidden_state
        b = trim(**trim_tok(corpus, padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(a, b)


def test_trim_refuses_an_existing_folder(tmp_path):
    rng = _tiny_model(tmp_path / "full", 5)
    (tmp_path / "trim").mkdir()
    with pytest.raises(FileExistsError):
        trim_model(tmp_path / "full", _texts(rng, 3, "ab"), tmp_path / "trim")


def test_every_config_token_id_is_renumbered_and_maps_back(tmp_path):
    """Architectures name more ids than pad/bos/eos (ModernBERT: cls, sep, mask): each must point at the same piece
    after the trim, including pieces the corpus never uses, and map back to its full-vocabulary id."""
    rng = _tiny_model(tmp_path / "full", 7)
    full_tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    config = AutoConfig.from_pretrained(tmp_path / "full")
    unused_piece = full_tok.convert_tokens_to_ids("<mask>")
    config.update({"cls_token_id": 0, "sep_token_id": 2, "mask_token_id": unused_piece})
    config.save_pretrained(tmp_path / "full")
    trim_model(tmp_path / "full", _texts(rng, 11, "abc"), tmp_path / "trim")
    trimmed, trim_tok = AutoConfig.from_pretrained(tmp_path / "trim"), AutoTokenizer.from_pretrained(tmp_path / "trim")
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
    assert set(names) <= set(special_id_fields(trimmed))
    for name in names:
        assert trim_tok.convert_ids_to_tokens(getattr(trimmed, name)) == \
            full_tok.convert_ids_to_tokens(getattr(config, name)), name
        assert getattr(full_config(trimmed), name) == getattr(config, name), name
    assert trimmed.mask_token_id != unused_piece  # renumbered, not kept by chance


def test_a_config_token_id_outside_the_vocabulary_is_refused(tmp_path):
    rng = _tiny_model(tmp_path / "full", 8)
    config = AutoConfig.from_pretrained(tmp_path / "full")
    config.update({"sep_token_id": config.vocab_size + 3})
    config.save_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match=r"sep_token_id.*outside its vocabulary"):
        trim_model(tmp_path / "full", _texts(rng, 3, "ab"), tmp_path / "trim")
    assert not (tmp_path / "trim").exists()
