"""Fill a DeepSpeed JSON from the run config, and refuse one that contradicts it.

The DeepSpeed JSON holds DeepSpeed's own settings (ZeRO stage, buckets, offload). Batch sizes, precision and
clipping belong to the run config: a JSON may leave them "auto" or absent, and any number it does state must agree.

Accumulation is owned by the training step, not by DeepSpeed: one optimizer step runs every micro-batch and every
cached chunk inside ONE `coalesce_grad_reduction` block (DeepSpeed allows one block per optimizer step), so DeepSpeed
is told gradient_accumulation_steps = 1 with a micro-batch of per_device × grad_accum.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mimo_ds.config import ConfigError, RunConfig

_OWNED_SECTIONS = ("optimizer", "scheduler")


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return requested


def _check(ds: dict[str, Any], key: str, expected: Any, path: Path) -> None:
    stated = ds.get(key, "auto")
    if stated != "auto" and stated != expected:
        raise ConfigError(f"{path}: '{key}' is {stated!r} but the run config implies {expected!r}")


def _check_enabled(ds: dict[str, Any], section: str, expected: bool, path: Path) -> None:
    stated = ds.get(section, {}).get("enabled", "auto")
    if stated != "auto" and bool(stated) != expected:
        raise ConfigError(f"{path}: '{section}.enabled' is {stated!r} but run config precision implies {expected}")


def build_ds_config(cfg: RunConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """Return the DeepSpeed config dict for this run and world size, or raise ConfigError naming the JSON key."""
    path = cfg.deepspeed
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"DeepSpeed config {path} cannot be read: {exc}") from exc
    for section in _OWNED_SECTIONS:
        if section in raw:
            raise ConfigError(f"{path}: remove '{section}': optimizer and schedule are set in the run config's optim section")
    stage = raw.get("zero_optimization", {}).get("stage", 0)
    if stage not in (2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 2 or 3 (got {stage!r})")

    b = cfg.batch
    global_batch = b.per_device * b.grad_accum * world_size
    if b.global_batch is not None and b.global_batch != global_batch:
        raise ConfigError(
            f"batch.global_batch is {b.global_batch} but per_device {b.per_device} × grad_accum {b.grad_accum} × "
            f"world size {world_size} = {global_batch}"
        )
    _check(raw, "train_batch_size", global_batch, path)
    _check(raw, "train_micro_batch_size_per_gpu", b.per_device, path)
    _check(raw, "gradient_accumulation_steps", b.grad_accum, path)
    _check(raw, "gradient_clipping", cfg.optim.max_grad_norm, path)
    precision = resolve_precision(cfg.precision, device)
    _check_enabled(raw, "bf16", precision == "bf16", path)
    _check_enabled(raw, "fp16", precision == "fp16", path)

    ds = copy.deepcopy(raw)
    ds["train_micro_batch_size_per_gpu"] = b.per_device * b.grad_accum
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = global_batch
    ds["gradient_clipping"] = cfg.optim.max_grad_norm
    ds["bf16"] = {**raw.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**raw.get("fp16", {}), "enabled": precision == "fp16"}
    if precision == "fp16":
        ds["fp16"].setdefault("initial_scale_power", 16)
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in ("none", None)


#: `resident_params: auto` keeps the student resident when its compute copy takes at most this share of memory.
RESIDENT_MEMORY_SHARE = 0.10


def device_memory_bytes(device: torch.device) -> int:
    """The accelerator's memory, or the machine's for a CPU run."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def keeps_resident(choice: str | bool, numel: int, precision: str, device: torch.device) -> bool:
    """Whether ZeRO-3 should keep the student's parameters gathered between steps (see `make_resident`)."""
    if choice != "auto":
        return bool(choice)
    bytes_per = 4 if precision == "fp32" else 2
    return numel * bytes_per <= RESIDENT_MEMORY_SHARE * device_memory_bytes(device)


def make_resident(ds: dict[str, Any], largest_numel: int) -> None:
    """ZeRO-3 with every parameter persistent: each rank keeps the full compute copy, all-gathered once after each
    optimizer step, so a cached pass's chunks (and their replays) run without gathering anything; gradients and the
    optimizer's fp32 state stay partitioned. This is DeepSpeed's own mechanism for small parameters
    (`stage3_param_persistence_threshold`), extended to all of them. DeepSpeed's memory-efficient linear (a Python
    autograd function replacing `F.linear`, which re-gathers a partitioned weight in backward instead of keeping it)
    has nothing to save then and only costs time, so it is switched off. Call before the student is built."""
    zero = ds.setdefault("zero_optimization", {})
    zero["stage3_param_persistence_threshold"] = int(largest_numel)
    zero["model_persistence_threshold"] = sys.maxsize
    zero["memory_efficient_linear"] = False
