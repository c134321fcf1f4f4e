"""`mimo-ds export`: a checkpoint or a stage output → a sentence-transformers or plain Hugging Face folder.

A checkpoint's ZeRO partitions are consolidated on the CPU, without a process group, by DeepSpeed's own
`zero_to_fp32` (the fp32 master weights, not the bf16 compute copies), but only after the checkpoint passed its
manifest (every file present, of its recorded size and checksum) and every `.pt` file in it loaded with
`weights_only=True` (`mimo_ds.checkpoint.verify`): zero_to_fp32 unpickles with `weights_only=False`, so a file
carrying anything else is refused by name, before it could run. A stage output is re-read as it is. Either is
written in the stage-output layout (`mimo_ds.models.stage_output`): `student/` (the encoder), `projection.safetensors` and
`mimo_ds_student.json` beside it, never inside it, so an export can also be a stage-2 run's `init_from`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from mimo_ds.checkpoint import SPEC_DIR, verify
from mimo_ds.cli_args import check_fresh_folder
from mimo_ds.errors import InputError, MissingInput
from mimo_ds.models.stage_output import (
    STUDENT_DIR,
    STUDENT_META,
    Format,
    read_projection,
    read_student_meta,
    write_stage_output,
)


def checkpoint_state(folder: Path) -> dict[str, torch.Tensor]:
    """The student's full fp32 state from a checkpoint's ZeRO partitions (CPU, no process group); call `verify`
    on the folder first."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)


def stage_output_state(folder: Path) -> dict[str, torch.Tensor]:
    """The student's state from a stage output's files (`encoder.*`, `projection.*`)."""
    weights = folder / STUDENT_DIR / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: export reads stage outputs written by mimo-ds")
    state = {f"encoder.{k}": v for k, v in load_file(str(weights)).items()}
    if (projection := read_projection(folder)) is not None:
        state.update({f"projection.{k}": v for k, v in projection.items()})
    return state


def export(source: Path, out: Path, fmt: Format = "st") -> Path:
    """Write `source` (a `checkpoints/step_<S>` folder or a stage output) into the fresh folder `out`."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: export into a fresh folder")
    if (source / STUDENT_META).is_file():
        meta = read_student_meta(source)
        spec, state = source / STUDENT_DIR, stage_output_state(source)
    else:
        checkpoint = verify(source)
        meta = {**checkpoint["student"], "run_id": checkpoint.get("run_id"), "steps": checkpoint["step"],
                "teacher": checkpoint.get("teacher"), "checkpoint": str(source)}
        spec, state = source / SPEC_DIR, checkpoint_state(source)
    config = AutoConfig.from_pretrained(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec)
    write_stage_output(out, config, state, tokenizer, meta, fmt=fmt)
    return out


def _run(args: argparse.Namespace) -> int:
    check_source_folder(args.checkpoint)
    check_fresh_folder(args.out, "--out")
    try:
        out = export(args.checkpoint, args.out, args.format)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "sentence-transformers" if args.format == "st" else "Hugging Face"
    print(f"{out / STUDENT_DIR}: {kind} folder (projection and mimo_ds_student.json beside it)")
    return 0


def check_source_folder(folder: Path) -> None:
    """`--checkpoint` names a folder: refused in one line before DeepSpeed or transformers are touched."""
    if not folder.exists():
        raise MissingInput(f"--checkpoint {folder}: no such folder (a <output_dir>/checkpoints/step_<S> folder or "
                           "a stage output)")
    if not folder.is_dir():
        raise InputError(f"--checkpoint {folder} is a file; it names a checkpoint or stage-output folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="a checkpoint (ZeRO partitions) or stage output → ST or HF folder")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a <output_dir>/checkpoints/step_<S> folder or a stage output folder")
    p.add_argument("--out", type=Path, required=True, help="a fresh folder")
    p.add_argument("--format", choices=("st", "hf"), default="st",
                   help="st: sentence-transformers (pooling, normalize, prompts); hf: plain transformers encoder")
    p.set_defaults(func=_run)
