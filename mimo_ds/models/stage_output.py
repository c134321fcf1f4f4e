"""A finished stage's output folder: writing it (end of training, `mimo-ds export`) and reading it (`init_from`).

Weights are the fp32 master copies (gathered from ZeRO at the end of a run, or consolidated from a checkpoint's
partitions by `mimo-ds export`), never the bf16 compute copies and never the shape-[0] shards a naive `state_dict()`
returns under ZeRO-3, so stage 2 starts from exactly what stage 1 trained. Layout of the folder:
  student/                the encoder: a sentence-transformers folder (encoder, tokenizer, modules.json, 1_Pooling,
                          2_Normalize, the run's max length and prompts) or, exported with `--format hf`, a plain
                          Hugging Face folder (encoder + tokenizer); always with the full vocabulary of the model
                          the student started from, also when it trained on a trimmed one
  projection.safetensors  P's weight and bias (training only; never inside the encoder's folder)
  mimo_ds_student.json    pooling, dims, prompts, stage, objective, teacher fingerprint, tracking run id
A folder written before P moved to safetensors has `projection.pt`; it is read with `weights_only=True`, so a file
carrying pickled code is refused.

It lives in `models/` because both sides of it are the student's: the student is built from one (`init_from`), and
it is written from the models' own pieces (pooling keys, the vocabulary write-back of `trim`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PretrainedConfig, PreTrainedTokenizerBase

from mimo_ds.models.st_files import write_st_files
from mimo_ds.models.trim import is_trimmed, restore_full_vocabulary

STUDENT_DIR = "student"
PROJECTION_FILE = "projection.safetensors"
LEGACY_PROJECTION_FILE = "projection.pt"
STUDENT_META = "mimo_ds_student.json"
Format = Literal["st", "hf"]


def gather_fp32_state(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective: every rank must call it. Returns the full fp32 state of the student (encoder and P) on rank 0,
    an empty dict elsewhere."""
    from deepspeed.utils import safe_get_full_fp32_param

    rank = dist.get_rank() if dist.is_initialized() else 0
    state: dict[str, torch.Tensor] = {}
    for name, param in student.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:
            full = param.detach().float()
        if rank == 0:
            state[name] = full.detach().cpu().clone()
    if rank == 0:
        persistent = set(student.state_dict().keys())
        for name, buf in student.named_buffers():
            if name in persistent:
                state[name] = buf.detach().cpu().clone()
    return state


def write_stage_output(
    out_dir: Path,
    encoder_config: PretrainedConfig,
    state: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    meta: dict[str, Any],
    *,
    fmt: Format = "st",
) -> None:
    """Write the folder from a student state dict (`encoder.*` and, when trained with a teacher, `projection.*`).

    A student trained on a trimmed vocabulary (`mimo_ds.models.trim`) is written with the full one: its trained rows
    at their original ids in the full model's matrix, every other row the full model's, and the full tokenizer.

    `meta` must hold `pooling`, `hidden_size`, `max_length` and `prompts` ([query, passage]): they go into the
    sentence-transformers files so the exported model encodes as it was trained. Build the encoder here only once
    ZeRO-3's HF config is released (a live one would partition it).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = out_dir / STUDENT_DIR
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    meta = {**meta, "num_layers": getattr(encoder_config, "num_hidden_layers", None)}
    if is_trimmed(encoder_config):
        trained_rows = int(encoder_config.vocab_size)
        encoder_config, encoder_state, tokenizer = restore_full_vocabulary(encoder_config, encoder_state, tokenizer)
        meta = {**meta, "vocabulary": {"trained_rows": trained_rows, "written": int(encoder_config.vocab_size)}}
    encoder = AutoModel.from_config(encoder_config)
    encoder.load_state_dict(encoder_state, strict=True)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if fmt == "st":
        write_st_files(folder, meta["pooling"], int(meta["hidden_size"]), int(meta["max_length"]),
                       tuple(meta["prompts"]))
    if "projection.weight" in state:
        save_file({"weight": state["projection.weight"].contiguous(), "bias": state["projection.bias"].contiguous()},
                  str(out_dir / PROJECTION_FILE))
    (out_dir / STUDENT_META).write_text(json.dumps({**meta, "format": fmt}, indent=2, default=str))


def read_student_meta(folder: Path) -> dict[str, Any]:
    meta_file = folder / STUDENT_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder} is not a mimo-ds stage output (no {STUDENT_META})")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_file} is not valid JSON: {exc}") from exc


def read_projection(folder: Path) -> dict[str, torch.Tensor] | None:
    """P's `weight` and `bias` from a stage output, or None when it has none (a teacher-free objective).

    Errors name the file: a truncated or corrupt safetensors file, or a legacy `projection.pt` holding anything but
    tensors (`weights_only=True` refuses pickled objects, which could run code)."""
    path = folder / PROJECTION_FILE
    if path.is_file():
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} cannot be read: {exc}") from exc
    elif (path := folder / LEGACY_PROJECTION_FILE).is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            raise ValueError(f"{path} cannot be read as tensors only (weights_only=True): {exc}") from exc
    else:
        return None
    if not isinstance(state, dict) or not {"weight", "bias"} <= set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} must hold P's 'weight' and 'bias', found {found}")
    return {"weight": state["weight"], "bias": state["bias"]}
