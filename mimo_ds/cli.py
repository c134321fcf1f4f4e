"""`mimo-ds`: one command for the whole workflow. Sub-commands are registered by the modules that own them.

Exit statuses: 0 done; 2 bad input (one line `error: ...` on stderr, nothing started); other statuses are the
command's own (train: 1 failed, 75 preempted and resumable). A traceback means a bug; `--debug` or `MIMO_DEBUG=1`
shows one for bad input too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from mimo_ds.errors import DEBUG_ENV, EXIT_BAD_INPUT, report_errors

# Modules that add sub-commands: each exposes `register(subparsers)`; a sub-command sets `func(args) -> int`.
_COMMAND_MODULES = (
    "mimo_ds.data.cli",        # shards, teacher-cache
    "mimo_ds.eval.cli",        # eval
    "mimo_ds.compare.cli",     # compare, ui
    "mimo_ds.demo",            # demo
    "mimo_ds.export",          # export
)


def _train(args: argparse.Namespace) -> int:
    """One process runs in-process; several are started by `mimo_ds.launch` (checks once, the trainer's status)."""
    train_args = ["--config", args.config] + [f"--set={s}" for s in args.overrides]
    if args.resume is not None:
        train_args += ["--resume", args.resume]
    if args.overwrite:
        train_args.append("--overwrite")
    if args.nproc == 1:
        from mimo_ds.train import main

        return main(train_args)
    from mimo_ds.launch import launch

    return launch(train_args, args.nproc)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage of a sub-command is many lines; `--help` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mimo-ds", description="MIMO multilingual embedding trainer",
        epilog="Bad input ends with one line 'error: ...' and exit status 2; a traceback means a bug.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback behind an error message too (or {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one stage from a run config")
    train.add_argument("--config", required=True)
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--nproc", type=int, default=1, help="processes on this node (launched like torchrun)")
    train.add_argument("--resume", metavar="auto|never|FOLDER", help="continue from a checkpoint (see mimo_ds.train)")
    train.add_argument("--overwrite", action="store_true", help="a fresh run may replace an earlier run's outputs")
    train.set_defaults(func=_train)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:  # the environment, so that processes this command starts (training ranks) inherit it
        os.environ[DEBUG_ENV] = "1"
    return report_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
