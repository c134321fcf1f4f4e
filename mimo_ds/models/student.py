"""The student: a multilingual HF encoder + pooling, and the projection P into the teacher's space.

Encoder and projection are ONE module so that DeepSpeed shards, casts and optimises both: P keeps fp32 master
weights like every other parameter. Activations are cast to P's dtype, never P itself (MIMO's reference code cast
the projection in place to the student's bf16 and so lost its fp32 master copy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from mimo_ds.batch import Embedded
from mimo_ds.config import Pooling, StudentConfig
from mimo_ds.models.loading import layer_overrides, load_encoder, load_tokenizer, resolve_model_path
from mimo_ds.models.pooling import pool
from mimo_ds.models.stage_output import STUDENT_DIR, read_projection, read_student_meta
from mimo_ds.models.trim import (
    embedding_name,
    is_written_back,
    retrimmed_config,
    retrimmed_tokenizer,
    special_id_fields,
    trim_record,
)


class Student(nn.Module):
    """Encoder + pooling + optional projection. `forward` returns fp32 vectors whatever the compute dtype."""

    def __init__(self, encoder: PreTrainedModel, pooling: Pooling, teacher_dim: int | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.projection = _new_projection(self.hidden_size, teacher_dim) if teacher_dim else None

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Embedded:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        proj = None
        if self.projection is not None:
            # Called as a module so ZeRO-3's hooks gather P; the input is cast to P's compute dtype, P stays as is.
            proj = self.projection(emb.to(self.projection.weight.dtype)).float()
        return Embedded(emb=emb.float(), proj=proj)


def _new_projection(in_dim: int, out_dim: int) -> nn.Linear:
    """P is born like the encoder: under ZeRO-3 (a live HfDeepSpeedConfig) partitioned and in the run's compute
    dtype, so ZeRO sees one dtype across the module (a bf16 encoder beside an fp32 P fails in ZeRO-3's flattening);
    its fp32 master copy lives in the optimizer like every other parameter's."""
    from transformers.integrations import deepspeed_config, is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nn.Linear(in_dim, out_dim, bias=True)
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config()):
        return nn.Linear(in_dim, out_dim, bias=True)


def build_student(cfg: StudentConfig, teacher_dim: int | None, init_from: Path | None) -> Student:
    """Build the student from its backbone, or from a finished stage's output (student weights + projection)."""
    if init_from is None:
        encoder = load_encoder(cfg.path, random_init=cfg.random_init, attn_implementation=cfg.attn_implementation,
                               trust_remote_code=cfg.trust_remote_code, num_layers=cfg.num_layers)
        student = Student(encoder, cfg.pooling, teacher_dim)
    else:
        student = _from_stage_output(cfg, teacher_dim, init_from)
    if cfg.gradient_checkpointing:
        _checkpoint_activations(student.encoder)
    return student


def _checkpoint_activations(encoder: PreTrainedModel) -> None:
    """Recompute each layer's activations in backward (non-reentrant, as PyTorch recommends). transformers 5
    renamed the switch and warns on the old name; the old name is all that releases before it have."""
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def student_size(cfg: StudentConfig, teacher_dim: int | None, init_from: Path | None) -> tuple[int, int]:
    """(parameters in all, in the largest tensor) of the student `build_student` would build, counted on the meta
    device: no memory, no weights read, and no ZeRO-3 context needed yet (the decisions it feeds come before one)."""
    from transformers import AutoModel

    source = str(init_from / STUDENT_DIR) if init_from is not None else resolve_model_path(cfg.path)
    overrides = {**(cfg.random_init or {}), **layer_overrides(source, cfg.num_layers, cfg.trust_remote_code)} \
        if init_from is None else {}
    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **overrides)
    if init_from is not None and is_written_back(config):
        config = retrimmed_config(config)
    with torch.device("meta"):
        encoder = AutoModel.from_config(config, trust_remote_code=cfg.trust_remote_code)
    sizes = [p.numel() for p in encoder.parameters()]
    if teacher_dim:
        sizes += [int(config.hidden_size) * teacher_dim, teacher_dim]
    return sum(sizes), max(sizes)


def _from_stage_output(cfg: StudentConfig, teacher_dim: int | None, init_from: Path) -> Student:
    meta = read_student_meta(init_from)
    if meta["pooling"] != cfg.pooling:
        raise ValueError(
            f"init_from {init_from} was trained with pooling '{meta['pooling']}', the config asks for '{cfg.pooling}'"
        )
    folder = init_from / STUDENT_DIR
    if is_written_back(AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)):
        encoder = _retrimmed_encoder(folder, cfg)
    else:
        encoder = load_encoder(str(folder), random_init=None, attn_implementation=cfg.attn_implementation,
                               trust_remote_code=cfg.trust_remote_code)
    if cfg.num_layers is not None and encoder.config.num_hidden_layers != cfg.num_layers:
        raise ValueError(f"student.num_layers is {cfg.num_layers} but init_from {init_from} holds "
                         f"{encoder.config.num_hidden_layers} layers")
    student = Student(encoder, cfg.pooling, teacher_dim)
    state = read_projection(init_from) if student.projection is not None else None
    if student.projection is not None and state is not None:
        weight = student.projection.weight
        needed = tuple(getattr(weight, "ds_shape", weight.shape))  # ZeRO-3 keeps the full shape in ds_shape
        if tuple(state["weight"].shape) != needed:
            raise ValueError(_projection_mismatch(init_from, tuple(state["weight"].shape), needed))
        _load_projection(student.projection, state)
    return student


def _retrimmed_encoder(folder: Path, cfg: StudentConfig) -> PreTrainedModel:
    """A stage output's full-vocabulary encoder cut back to the rows its run trained (recorded in its config), so
    the next stage trains on the same vocabulary, as fast as the last one. Built like the backbone (partitioned
    under ZeRO-3), then given the stored weights; the build's random initialisation runs on a forked RNG, so the
    run's random stream (dropout masks) is the one a plain `from_pretrained` load leaves, which draws nothing."""
    trimmed = retrimmed_config(AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code))
    overrides = {name: getattr(trimmed, name) for name in ("vocab_size", *special_id_fields(trimmed))}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        encoder = load_encoder(str(folder), random_init=overrides, attn_implementation=cfg.attn_implementation,
                               trust_remote_code=cfg.trust_remote_code)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: a written-back stage output keeps its encoder in one file")
    state = load_file(str(weights))
    key = embedding_name(encoder)
    state[key] = state[key][torch.tensor(trim_record(trimmed)["kept_ids"])]
    _load_state(encoder, state, weights)
    return encoder


def student_tokenizer(cfg: StudentConfig, init_from: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer `build_student`'s encoder reads: the backbone's, a stage output's, or for a stage output written
    back to the full vocabulary, that tokenizer cut to the rows the encoder keeps."""
    if init_from is None:
        return load_tokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code)
    folder = init_from / STUDENT_DIR
    tokenizer = load_tokenizer(str(folder), trust_remote_code=cfg.trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    return retrimmed_tokenizer(tokenizer, trim_record(config)["kept_ids"]) if is_written_back(config) else tokenizer


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """`module.load_state_dict(state, strict=True)`, also under ZeRO-3, where each parameter is gathered, written on
    rank 0 and re-partitioned."""
    import deepspeed

    expected = set(module.state_dict())
    if set(state) != expected:
        raise ValueError(f"{source}: its tensors do not fit the encoder (missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]})")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = params.get(name)
            if target is None:
                module.get_buffer(name).copy_(value)
                continue
            with deepspeed.zero.GatheredParameters([target], modifier_rank=0, enabled=hasattr(target, "ds_id")):
                target.copy_(value)


def _projection_mismatch(folder: Path, saved: tuple[int, ...], needed: tuple[int, ...]) -> str:
    return (f"the projection in {folder} maps {saved[1]} → {saved[0]} dims, this run needs {needed[1]} → "
            f"{needed[0]} (a different student or teacher?)")


def check_projection(init_from: Path, student_dim: int, teacher_dim: int, fresh: bool = False) -> None:
    """Preflight: a stage output's P must map this student's width to this teacher's (read without building models),
    and must be there unless the config asks for a fresh one (`projection.fresh`)."""
    state = read_projection(init_from)
    if state is None and not fresh:
        raise ValueError(f"init_from {init_from} has no projection.safetensors (a stage output without P, e.g. from a "
                         "teacher-free objective): stage 2 would start distilling through a random P; point init_from "
                         "at stage 1's output, or set projection.fresh=true to train a new P on purpose")
    if state is not None and tuple(state["weight"].shape) != (teacher_dim, student_dim):
        raise ValueError(_projection_mismatch(init_from, tuple(state["weight"].shape), (teacher_dim, student_dim)))


def _load_projection(projection: nn.Linear, state: dict[str, torch.Tensor]) -> None:
    """Copy saved values into P; under ZeRO-3 only rank-local shards exist, so gather, write, re-partition."""
    import deepspeed

    params = list(projection.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=hasattr(params[0], "ds_id")):
        with torch.no_grad():
            projection.weight.copy_(state["weight"])
            projection.bias.copy_(state["bias"])
