"""Argument types and output checks shared by the `mimo-ds` sub-commands: a bad value is refused by argparse
(usage line + one error, exit 2) or as a `UserError` before any work starts, never as a traceback halfway through.

Kept free of heavy imports: the `mimo-ds` parser imports this for every sub-command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mimo_ds.errors import ExistingOutput, InputError


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (batch sizes, step counts, cut-offs, lengths, workers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device_name(text: str) -> str:
    """A torch device this machine has (`cpu`, `cuda`, `cuda:1`); torch is imported only when the option is given."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def check_output_file(path: Path | None, option: str) -> None:
    """A file the command will write: not a folder, and under a folder (existing or creatable), checked up front."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    _check_parent(path, option)


def check_fresh_folder(path: Path, option: str) -> None:
    """A folder the command will fill: absent or empty, so nothing of an earlier run or of the user is overwritten."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; it names a folder to create")
    if path.is_dir() and any(path.iterdir()):
        raise ExistingOutput(f"{option} {path} exists and is not empty: give a fresh folder (nothing was changed)")
    _check_parent(path, option)


def _check_parent(path: Path, option: str) -> None:
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is a file, not a folder")
