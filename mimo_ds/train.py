"""Train one MIMO stage: `deepspeed mimo_ds/train.py --config X`, `torchrun ... mimo_ds/train.py --config X`, or
`python -m mimo_ds.train --config X` (one process; the rendezvous variables are filled in).

Order matters and is the point of this file: validate everything (config, DeepSpeed JSON, model and data paths,
the checkpoint to resume from, what a fresh run would overwrite) before any process group starts; then
`mimo_ds.trainer.run` loads the frozen teacher before ZeRO-3's `HfDeepSpeedConfig` exists so it is never
partitioned, builds the student under it so it is, and streams, steps, logs, evaluates and writes the stage output.

Exit status (docs/training.md has the table and what each means for a requeue): 0 finished; 1 the run failed for a
reason it names (one message, from one rank), also a full disk; 2 bad input, refused before any process group; 75
(`mimo_ds.signals.EXIT_PREEMPTED`) stopped by SIGTERM/SIGUSR1/SIGINT after writing a checkpoint: start the same
command again with `--resume auto` to continue; 130 a second Ctrl-C before that checkpoint was written.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: keep mimo_ds/ itself off the path so its modules never shadow top-level ones

import argparse
import errno
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mimo_ds.config import ConfigError, RunConfig, load_config
from mimo_ds.errors import InputError, MissingInput, UserError, report_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mimo_ds.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config YAML (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-5 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|never|FOLDER",
                        help="continue from the newest complete checkpoint under output_dir (auto; a fresh start when "
                             "there is none), never, or a checkpoint folder (default: the config's `resume`, never)")
    parser.add_argument("--overwrite", action="store_true",
                        help="a fresh run may replace the checkpoints and stage output already in output_dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resume_choice(cli: str | None, cfg: RunConfig) -> str | Path:
    """The CLI's --resume over the config's; a folder given on the command line is relative to the cwd."""
    if cli is None:
        return cfg.resume
    return cli if cli in ("auto", "never") else Path(cli).resolve()


#: Set by `mimo-ds train --nproc N` (`mimo_ds.launch`) for the ranks it starts: it ran the checks once before them
#: and printed their warnings, which its rank 0 would otherwise print a second time.
CHECKED_BY_LAUNCHER_ENV = "MIMO_CHECKED_BY_LAUNCHER"


def is_rank_zero() -> bool:
    """Rank 0 of the launch (or a plain process, or the `mimo-ds train --nproc` wrapper): the one that speaks."""
    return os.environ.get("RANK", "0") == "0"


def warns_in_preflight() -> bool:
    """Whether this process prints the checks' warnings: rank 0, unless `mimo-ds train --nproc` started it after
    printing them itself."""
    return is_rank_zero() and os.environ.get(CHECKED_BY_LAUNCHER_ENV) != "1"


def launcher_world_size() -> int:
    """The world size the launcher (torchrun, deepspeed, srun via slurm/) announces; 1 for a plain process."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"environment WORLD_SIZE={raw!r} is not a positive integer")
    return int(raw)


def preflight(cfg: RunConfig, resume: str | Path = "never", overwrite: bool = False,
              world: int | None = None) -> Path | None:
    """Every check that can fail before a process group: a failure here is one message and exit status 2, instead
    of a traceback on every rank minutes later. Returns the checkpoint to resume from (None: a fresh run).
    `world`: the world size to check for (default: the launcher's `WORLD_SIZE`; `mimo-ds train --nproc` passes its
    own before any rank exists)."""
    from mimo_ds.data.verify import check_shards
    from mimo_ds.ds_config import build_ds_config
    from mimo_ds.models.loading import check_model_path

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = launcher_world_size() if world is None else world
    check_output_dir(cfg.output_dir)
    build_ds_config(cfg, world, device)  # batch arithmetic and precision against the DeepSpeed JSON
    with bad_input():
        check_model_path(cfg.student.path)
        if cfg.teacher is not None and cfg.data.teacher_cache is None:
            check_model_path(cfg.teacher.path)
    if not (cfg.data.train / "index.json").is_file():
        raise ConfigError(f"data.train: no index.json in {cfg.data.train} (build shards with `mimo-ds shards`)")
    try:  # missing, resized (or with data.verify: full, altered) shards: refuse before any process group
        check_shards(cfg.data.train, cfg.data.verify)
    except ValueError as exc:
        raise ConfigError(f"data.train: {exc}") from exc
    if cfg.data.teacher_cache is not None:  # another teacher, prompt, max length or other shards: refuse now
        from mimo_ds.data.teacher_cache import check_run_cache

        with bad_input():
            check_run_cache(cfg)
    if cfg.init_from is not None:
        from mimo_ds.data.teacher_cache import teacher_width
        from mimo_ds.models.student import check_projection
        from mimo_ds.models.stage_output import read_student_meta

        with bad_input():
            student_dim = int(read_student_meta(cfg.init_from)["hidden_size"])
            if cfg.teacher is not None:
                check_projection(cfg.init_from, student_dim, teacher_width(cfg), fresh=cfg.projection.fresh)
    for bench in cfg.eval.benchmarks:
        if not bench.is_dir():
            raise ConfigError(f"eval.benchmarks: {bench} is not a folder")
    return check_resume(cfg, resume, overwrite, world)


@contextmanager
def bad_input() -> Iterator[None]:
    """Around a check that reads the user's inputs (model folders, a stage output, a teacher cache): what it raises
    for them, FileNotFoundError for one that is not there and ValueError for one that cannot be used, is bad input,
    re-raised as the `UserError` it is with its message unchanged. Only these checks are covered, so a ValueError from
    anywhere else (a bug) keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise MissingInput(str(exc)) from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def check_output_dir(output_dir: Path) -> None:
    """output_dir, or the nearest part of it that exists, must be a folder (else the run fails after the process
    group started, on every rank)."""
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == output_dir else f"lies under {existing}, which is a file"
        raise ConfigError(f"output_dir {output_dir} {what}, not a folder")


def check_resume(cfg: RunConfig, resume: str | Path, overwrite: bool, world: int) -> Path | None:
    """The checkpoint to continue from, refused when it is broken, holds foreign objects, or cannot continue this
    run exactly; a fresh run refused when it would overwrite an earlier run's outputs without --overwrite. Broken
    checkpoints `--resume auto` passes over are named (rank 0) and deleted (rank 0): they can never be resumed."""
    from mimo_ds.checkpoint import read_meta, resolve_resume
    from mimo_ds.run_dir import existing_outputs, identity_differences, replaced_folders, run_identity
    from mimo_ds.models.stage_output import STUDENT_META

    def skipped(folder: Path, why: str) -> None:
        if warns_in_preflight():
            print(f"warning: {why}; skipped and deleted", file=sys.stderr)
        if is_rank_zero():
            shutil.rmtree(folder, ignore_errors=True)

    try:
        folder = resolve_resume(resume, cfg.output_dir, skipped)
        meta = None if folder is None else read_meta(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: {exc}") from exc
    if folder is None:
        if (found := existing_outputs(cfg.output_dir)) and not overwrite:
            aside = "".join(f"; {f} holds the outputs an earlier --overwrite set aside" for f in
                            replaced_folders(cfg.output_dir))
            if resume != "auto":
                advice = "continue it with --resume auto, or replace it with --overwrite"
            elif STUDENT_META in found:
                advice = ("that run finished and left no checkpoint to continue: use its output, train into another "
                          "output_dir, or train it again with --overwrite")
            else:
                advice = "it left no complete checkpoint to continue from: start it again with --overwrite"
            raise ConfigError(f"output_dir {cfg.output_dir} already holds {', '.join(found)} from an earlier run: "
                              f"{advice}{aside}")
        return None
    if meta["format"] == 1 and warns_in_preflight():
        print(f"warning: checkpoint {folder} predates checkpoint manifests: its files were checked for presence "
              "only, not size or checksum", file=sys.stderr)
    if diffs := identity_differences(meta, run_identity(cfg, world)):
        raise ConfigError(f"cannot resume from {folder}: the run differs from the one that wrote it in "
                          + "; ".join(diffs))
    return folder


def fill_rendezvous_env() -> None:
    """A plain `python -m mimo_ds.train` is a world of one: set what a launcher would have set."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def checked(args: argparse.Namespace, world: int | None = None) -> tuple[RunConfig, Path | None] | None:
    """The config and the checkpoint to resume from, or None after the one `error:` line that refuses them, as every
    `mimo-ds` command refuses bad input (`report_errors`: a `UserError` only, printed by rank 0; anything else is a
    bug and keeps its traceback)."""
    found: list[tuple[RunConfig, Path | None]] = []

    def check() -> None:
        cfg = load_config(args.config, args.overrides)
        found.append((cfg, preflight(cfg, resume_choice(args.resume, cfg), args.overwrite, world)))

    return found[0] if report_errors(check) == 0 else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (ready := checked(args)) is None:
        return 2
    cfg, resume_from = ready
    fill_rendezvous_env()
    # torch 2.13 deprecates the collectives ZeRO calls on every step; the warning says nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*deprecated")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from mimo_ds.errors import RunAborted, RunError
    from mimo_ds.signals import EXIT_INTERRUPTED
    from mimo_ds.trainer import run

    try:
        return run(cfg, Path(args.config), resume_from, args.overwrite)
    except RunError as exc:
        if not isinstance(exc, RunAborted) and (exc.local or is_rank_zero()):
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_rank_zero():
            print("mimo-ds: interrupted before a checkpoint was written: --resume auto continues from the newest "
                  "earlier one, if any", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on device writing {exc.filename or cfg.output_dir}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not lost_a_peer(exc):
            raise
        if is_rank_zero():
            print(f"error: another rank stopped without a word (killed or crashed; its own log or exit status says "
                  f"why); this rank lost it in a collective: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def lost_a_peer(exc: RuntimeError) -> bool:
    """A collective failed because another rank's process went away (gloo: the connection closed; NCCL: a
    communicator error): not this rank's bug, and no traceback of its own helps."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or "by peer" in text or "gloo/transport/" in text


if __name__ == "__main__":
    sys.exit(main())
