"""`mimo-ds`: one command for the whole workflow. Sub-commands are registered by the modules that own them."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimo-ds", description="MIMO multilingual embedding trainer")
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
