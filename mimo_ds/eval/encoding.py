"""Encoders for evaluation: the protocol, the collective-safe batching used by the hook, and a model-folder loader.

The training-time encoder is collective under ZeRO-3: each forward gathers parameter shards from every rank, so
every rank must call `encode` the same number of times with the same number of texts, or the job hangs. `encode_all`
therefore gives each rank an equal-sized slice (padded with repeats), batches it identically on every rank, and
all-gathers the embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from mimo_ds.errors import InputError, MissingInput
from mimo_ds.eval.search import gather_rows
from mimo_ds.models.encoding import encode_texts, pooled_forward
from mimo_ds.models.pooling import ST_POOLING_KEYS, pooling_mode

Role = Literal["query", "passage"]
EncodeFn = Callable[[list[str], Role], Tensor]


def prompted(texts: Sequence[str], role: Role, query_prompt: str, passage_prompt: str) -> list[str]:
    """The evaluation-time prompt rule, one home for `HFEncoder` and the trainer's in-training evaluation: a query
    gets the model's query prompt, a passage its passage prompt, in front of the text."""
    prompt = query_prompt if role == "query" else passage_prompt
    return [prompt + t for t in texts]


class Encoder(Protocol):
    """Anything with `encode(texts, role) -> FloatTensor[n, d]`, L2-normalised rows."""

    def encode(self, texts: list[str], role: Role) -> Tensor: ...


def encode_all(encode: EncodeFn, texts: Sequence[str], role: Role, *, batch_size: int, rank: int = 0,
               world_size: int = 1, progress: bool = False) -> Tensor:
    """Embeddings `[len(texts), d]` (float32, CPU, L2-normalised) in the order of `texts`, on every rank.

    Texts are sorted by length (longest first, so a batch that does not fit fails at once) and dealt round-robin,
    which gives every rank the same number of texts of similar lengths; each rank pads its slice to
    ceil(n / world_size) with its last text, so all ranks make the same calls with the same batch sizes.
    """
    n = len(texts)
    order = sorted(range(n), key=lambda i: -len(texts[i]))
    per_rank = -(-n // world_size)
    mine = order[rank::world_size]
    mine += (mine[-1:] or order[-1:]) * (per_rank - len(mine))
    chunks = []
    starts = range(0, per_rank, batch_size)
    for start in tqdm(starts, desc=f"encode {role}s", disable=not progress, leave=False):
        batch = [texts[i] for i in mine[start : start + batch_size]]
        chunks.append(F.normalize(encode(batch, role).float(), dim=-1))
    if not chunks:
        return torch.empty(0, 0)
    blocks = gather_rows(torch.cat(chunks), world_size)  # [W, per_rank, d]
    out = torch.empty(n, blocks.shape[-1])
    for r in range(world_size):
        positions = order[r::world_size]
        out[positions] = blocks[r, : len(positions)]
    return out


class HFEncoder:
    """A transformers encoder with pooling, prompts, length-sorted batches, bf16 on GPU; implements `Encoder`.

    `pooling` is one of `mimo_ds.models.pooling`'s modes or a sentence-transformers name (`lasttoken` → `last`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, pooling: str = "mean", query_prompt: str = "",
                 passage_prompt: str = "", max_length: int = 512, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.pooling = model.eval(), tokenizer, pooling_mode(pooling)
        self.prompts = {"query": query_prompt, "passage": passage_prompt}
        self.max_length, self.batch_size = max_length, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, texts: list[str], role: Role) -> Tensor:
        texts = prompted(texts, role, self.prompts["query"], self.prompts["passage"])
        emb = encode_texts(pooled_forward(self.model, self.pooling), self.tokenizer, texts,
                           max_length=self.max_length, batch_size=self.batch_size, device=self.device)
        return F.normalize(emb, dim=-1)


def _json_object(path: Path, kind: type = dict) -> dict | list:
    """A JSON file of the model folder, or an InputError naming it (a hand-edited folder is a common mistake)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInput(f"{path} not found: the model folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, kind) or (kind is list and not all(isinstance(m, dict) for m in value)):
        raise InputError(f"{path}: expected a JSON {'list of objects' if kind is list else 'object'}")
    return value


def read_st_folder(path: Path) -> dict:
    """What a sentence-transformers folder says about loading: transformer sub-folder, pooling, prompts, length."""
    info: dict = {"transformer": path}
    modules = _json_object(path / "modules.json", list)
    for module in modules:
        kind, sub = str(module.get("type", "")), path / str(module.get("path", ""))
        if kind.endswith("Transformer"):
            info["transformer"] = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.exists():
                info["max_length"] = _json_object(cfg).get("max_seq_length")
        elif kind.endswith("Pooling"):
            cfg = _json_object(sub / "config.json")
            modes = [mode for mode, key in ST_POOLING_KEYS.items() if cfg.get(key)]
            if len(modes) != 1:
                raise InputError(f"{sub / 'config.json'}: need exactly one of {sorted(ST_POOLING_KEYS.values())} "
                                 f"set, found the modes {modes or 'none'}")
            info["pooling"] = modes[0]
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.exists():
        prompts = _json_object(st_cfg).get("prompts") or {}
        info["query_prompt"] = prompts.get("query", "")
        info["passage_prompt"] = next((prompts[k] for k in ("passage", "document", "corpus") if k in prompts), "")
    return info


def load_encoder(path: str | Path, *, pooling: str | None = None, query_prompt: str | None = None,
                 passage_prompt: str | None = None, max_length: int | None = None, batch_size: int = 64,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 num_layers: int | None = None) -> HFEncoder:
    """Load a sentence-transformers folder (pooling and prompts from its files) or a plain HF model folder
    (mean pooling, no prompts) without any hub access. Explicit arguments override what the folder says.
    bf16 on a GPU when there is one, float32 on the CPU. `num_layers` keeps the encoder's lower layers, as
    `student.num_layers` does in training, so an untrained truncated student is evaluated as it will train."""
    from transformers import AutoModel, AutoTokenizer

    from mimo_ds.models.loading import load_encoder as load_model

    path = check_model_folder(path)
    info = read_st_folder(path) if (path / "modules.json").exists() else {"transformer": path}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:  # transformers says what is missing or wrong in the folder (OSError) or its config (ValueError)
        model = AutoModel.from_pretrained(info["transformer"], dtype=dtype) if num_layers is None else \
            load_model(str(info["transformer"]), random_init=None, attn_implementation="sdpa", dtype=dtype,
                       num_layers=num_layers)
        tokenizer = AutoTokenizer.from_pretrained(info["transformer"])
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load the model: {_first_line(exc)}") from exc
    return HFEncoder(model.to(device), tokenizer, pooling=pooling or info.get("pooling", "mean"),
                     query_prompt=info.get("query_prompt", "") if query_prompt is None else query_prompt,
                     passage_prompt=info.get("passage_prompt", "") if passage_prompt is None else passage_prompt,
                     max_length=max_length or info.get("max_length") or 512, batch_size=batch_size)


def check_model_folder(path: str | Path) -> Path:
    """`path` as a local model folder, or a UserError saying why not: evaluation never downloads, so a hub name
    (`intfloat/multilingual-e5-small`) that is no folder here is named as such."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise InputError(f"{path}: not a model folder (no config.json or modules.json)")
        return path
    if path.exists():
        raise InputError(f"{path} is a file; --model takes a model folder (sentence-transformers or Hugging Face)")
    hub_like = not path.is_absolute() and len(path.parts) == 2 and not str(path).startswith(".")
    hint = (" (evaluation reads local folders only and never downloads: fetch a hub model first, e.g. "
            f"`huggingface-cli download {path} --local-dir DIR`)") if hub_like else ""
    raise MissingInput(f"model folder not found: {path}{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
