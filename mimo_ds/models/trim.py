"""Vocabulary trimming: a Unigram-tokenizer encoder restricted to the pieces a corpus uses, identical on that corpus.

multilingual-e5-small spends 96M of its 118M parameters on the embedding rows of 250,037 pieces; a demo corpus in a
dozen languages uses a few tens of thousands of them. Every optimizer step and every ZeRO partition/gather pays for
all rows, so on a CPU the untouched rows dominate a step. Keeping only the used rows changes nothing the model computes
on the corpus: a Unigram tokenizer picks the best-scoring segmentation among its pieces, and removing pieces that no
best segmentation of the corpus uses leaves every best segmentation available and best. `trim_model` checks that
claim (every text tokenises to the same pieces as before) and refuses to write a model otherwise.

Texts outside the corpus may segment differently (into smaller pieces); the trimmed model is for training and
evaluating on the corpus it was trimmed for, which is how the demo uses it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
            "2_Normalize")
BATCH = 2048


def used_ids(tokenizer, texts: Sequence[str]) -> set[int]:
    """Every token id the tokenizer produces for `texts` (special tokens included)."""
    ids: set[int] = set()
    for start in range(0, len(texts), BATCH):
        for row in tokenizer(list(texts[start : start + BATCH]))["input_ids"]:
            ids.update(row)
    return ids


def _remap_tokenizer_json(spec: dict, keep: list[int]) -> dict:
    """The tokenizer.json of the trimmed vocabulary: Unigram pieces in `keep` order, ids of added and template special
    tokens renumbered."""
    if spec["model"]["type"] != "Unigram":
        raise ValueError(f"vocabulary trimming needs a Unigram tokenizer, got {spec['model']['type']}")
    new_id = {old: new for new, old in enumerate(keep)}
    model = spec["model"]
    model["vocab"] = [model["vocab"][i] for i in keep]
    if model.get("unk_id") is not None:
        model["unk_id"] = new_id[model["unk_id"]]
    for token in spec.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    return spec


def trim_model(source: str | Path, texts: Iterable[str], out: str | Path) -> dict[str, int]:
    """Write the model at `source` (an HF folder with a Unigram fast tokenizer, optionally sentence-transformers
    files) restricted to the pieces `texts` use into the fresh folder `out`; returns the vocabulary sizes."""
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

    source, out = Path(source), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: trim into a fresh folder")
    texts = list(dict.fromkeys(texts))
    tokenizer = AutoTokenizer.from_pretrained(source)
    keep = sorted(used_ids(tokenizer, texts) | set(tokenizer.all_special_ids))
    spec = _remap_tokenizer_json(json.loads(tokenizer.backend_tokenizer.to_str()), keep)
    trimmed_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                          **tokenizer.special_tokens_map, model_max_length=tokenizer.model_max_length)
    _check_same_pieces(tokenizer, trimmed_tok, texts, keep)

    model = AutoModel.from_pretrained(source)
    old = model.get_input_embeddings().weight.detach()
    config = model.config
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if value is not None:
            setattr(config, name, keep.index(value))
    config.vocab_size = len(keep)
    trimmed = AutoModel.from_config(config)
    state = {k: v for k, v in model.state_dict().items()}
    state[_embedding_key(model)] = old[torch.tensor(keep)].clone()
    trimmed.load_state_dict(state, strict=True)
    out.mkdir(parents=True)
    trimmed.save_pretrained(out)
    trimmed_tok.save_pretrained(out)
    for name in ST_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, out / name)
        elif (source / name).is_file():
            shutil.copy2(source / name, out / name)
    sizes = {"vocab_before": int(old.shape[0]), "vocab_after": len(keep), "texts": len(texts)}
    (out / "mimo_ds_trim.json").write_text(json.dumps({"source": str(source), **sizes}, indent=2))
    return sizes


def _embedding_key(model) -> str:
    weight = model.get_input_embeddings().weight
    return next(name for name, param in model.state_dict(keep_vars=True).items() if param is weight)


def _check_same_pieces(before, after, texts: list[str], keep: list[int]) -> None:
    """Refuse the trim unless every text gets the same pieces from the trimmed tokenizer as from the full one."""
    new_id = {old: new for new, old in enumerate(keep)}
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        for text, old, new in zip(chunk, before(chunk)["input_ids"], after(chunk)["input_ids"]):
            if [new_id[i] for i in old] != new:
                raise ValueError(f"vocabulary trimming would change the tokens of {text!r}; not trimming")
