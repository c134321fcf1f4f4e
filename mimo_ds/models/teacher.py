"""The frozen English teacher: replicated on every rank, outside any DeepSpeed engine.

It must be loaded BEFORE an `HfDeepSpeedConfig` for ZeRO-3 is alive, otherwise transformers partitions it while
loading and its shards belong to no engine (DeepSpeed issues #3175 and #3286 report the crashes this causes).
`mimo_ds.trainer.setup` keeps that order, and a test checks that the teacher's parameters are full-shaped and
unchanged after training.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from mimo_ds.batch import Tokens
from mimo_ds.config import TeacherConfig
from mimo_ds.models.encoding import encode_tokens, pooled_forward
from mimo_ds.models.fingerprint import fingerprint_of
from mimo_ds.models.loading import load_encoder, load_tokenizer, resolve_model_path

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def teacher_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


def config_width(cfg: TeacherConfig) -> int:
    """The teacher's embedding size from its config, without loading its weights."""
    config = AutoConfig.from_pretrained(resolve_model_path(cfg.path), trust_remote_code=cfg.trust_remote_code,
                                        **(cfg.random_init or {}))
    return int(config.hidden_size)


class Teacher:
    """Frozen encoder (BERT-like with mean/cls pooling, or decoder-style with left padding + last-token pooling).

    It embeds texts as given: the prompt rule (which roles are queries and get `query_prompt`) lives with the
    objectives' roles (`mimo_ds.objectives.role_texts`), shared by the loader and the teacher cache.
    """

    def __init__(self, cfg: TeacherConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, cfg: TeacherConfig, device: torch.device | str = "cpu") -> "Teacher":
        device = torch.device(device)
        padding_side = cfg.padding_side
        if padding_side == "auto":
            padding_side = "left" if cfg.pooling == "last" else "right"
        tokenizer = load_tokenizer(cfg.path, padding_side=padding_side, trust_remote_code=cfg.trust_remote_code)
        model = load_encoder(cfg.path, random_init=cfg.random_init, attn_implementation="auto",
                             dtype=teacher_dtype(cfg.dtype, device), trust_remote_code=cfg.trust_remote_code)
        model.to(device).eval().requires_grad_(False)
        return cls(cfg, model, tokenizer)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> dict[str, object]:
        """What makes two teachers' embeddings interchangeable; a teacher cache records and checks it."""
        return fingerprint_of(self.cfg, self.dim)

    def tokenize(self, texts: list[str]) -> Tokens:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_tokens(self, tokens: Tokens) -> torch.Tensor:
        """Embed pre-tokenised text in mini-batches of like lengths (rows come back in their order); fp32 result,
        L2-normalised when the teacher says so.

        The forward runs under inference_mode; the result is cloned outside it so the loss may save it for backward.
        """
        return self._forward(tokens).clone()

    @torch.inference_mode()
    def _forward(self, tokens: Tokens) -> torch.Tensor:
        emb = encode_tokens(pooled_forward(self.model, self.cfg.pooling), tokens, self.cfg.mini_batch, self.device)
        return F.normalize(emb, dim=-1) if self.cfg.normalize else emb

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(texts))
