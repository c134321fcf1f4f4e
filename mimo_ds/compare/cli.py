"""`mimo-ds compare` and `mimo-ds ui`.

`register(subparsers)` adds both sub-commands to the main `mimo-ds` parser; each sets `func`, which takes the
parsed arguments and returns the exit status. Heavy imports (MLflow, Matplotlib) happen inside the handlers so
that `mimo-ds --help` and the other sub-commands stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mimo_ds.cli_args import check_output_file, positive_int
from mimo_ds.errors import InputError, MissingInput, report_errors

_SHORT_TAGS = {"stage", "objective", "lambda", "group"}
# Stores MLflow's client can read (a bare path is a file store).
_STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return _tag_key(key), value


def _tag_key(key: str) -> str:
    """`stage` is short for `mimo.stage` (likewise objective, lambda, group); other keys are used as given."""
    return f"mimo.{key}" if key in _SHORT_TAGS else key


def _port(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {port}")
    return port


def _split(values: list[str] | None) -> list[str]:
    return [part for value in values or [] for part in value.split(",") if part]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `compare` and `ui` to the `mimo-ds` command line."""
    store_help = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"

    compare = subparsers.add_parser(
        "compare", help="compare MLflow runs in a table and an HTML report",
        description="Select runs by experiment, tags or run ids; print a table of final metrics (and, for runs "
                    "tagged mimo.arm/mimo.seed that repeat an arm, its mean ± standard deviation over seeds); "
                    "optionally write one self-contained HTML report with loss curves and evaluation plots.")
    compare.add_argument("--tracking-uri", help=store_help)
    compare.add_argument("--experiment", "-e", action="append", help="experiment name (repeatable; default mimo-ds)")
    compare.add_argument("--tag", "-t", action="append", type=_tag, default=[], metavar="KEY=VALUE",
                         help="keep runs with this tag (repeatable, all must match); "
                              "stage/objective/lambda/group mean mimo.<key>")
    compare.add_argument("--run-id", "-r", action="append", help="run id (repeatable or comma-separated)")
    compare.add_argument("--metrics", "-m", nargs="+", metavar="NAME_OR_GLOB",
                         help="metric names or globs (default: '*loss*' '*/ndcg_at_20'); '@' may be written as is")
    compare.add_argument("--group-by", type=_tag_key, help="tag to group rows by (stage, objective, lambda, group...)")
    compare.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report here")
    compare.set_defaults(func=run_compare)

    ui = subparsers.add_parser("ui", help="serve the MLflow UI on the same store",
                               description="Run `mlflow ui` on the store the trainer writes to.")
    ui.add_argument("--tracking-uri", help=store_help)
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=_port, default=5000)
    ui.add_argument("--workers", type=positive_int, default=1,
                    help="server processes (default 1: one person browsing; MLflow's own default is 4)")
    ui.set_defaults(func=run_ui)


def run_compare(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient
    from rich.console import Console

    from mimo_ds.compare.report import write_report
    from mimo_ds.compare.selection import RunSelection, SelectionError, select_runs
    from mimo_ds.compare.table import (
        DEFAULT_METRIC_PATTERNS,
        build_table,
        choose_metrics,
        group_arms,
        render_arm_table,
        render_table,
        repeated,
    )

    console, errors = Console(), Console(stderr=True)
    uri = store_uri(args.tracking_uri)
    check_output_file(Path(args.html) if args.html else None, "--html")
    client = MlflowClient(uri)
    selection = RunSelection(tuple(args.experiment or ()), dict(args.tag), tuple(_split(args.run_id)))
    runs = select_runs(client, selection)
    if not runs:
        errors.print("no runs match the selection")
        return 1
    metrics = (choose_metrics(runs, _split(args.metrics), require_match=True) if args.metrics
               else choose_metrics(runs, DEFAULT_METRIC_PATTERNS))
    if args.group_by and not any(args.group_by in run.data.tags for run in runs):
        tags = sorted({tag for run in runs for tag in run.data.tags if not tag.startswith("mlflow.")})
        raise SelectionError(f"--group-by {args.group_by}: no selected run has this tag; their tags: "
                             f"{', '.join(tags) or 'none'}")
    table = build_table(runs, metrics, args.group_by)
    wide = Console(width=max(console.width, 90 + sum(len(m) + 3 for m in table.metrics)))  # never squash to '…'
    wide.print(render_table(table))
    if repeated(arms := group_arms(table.runs)):
        wide.print(render_arm_table(arms, table.metrics))
    if args.html:
        console.print(f"report: {write_report(args.html, client, table, uri)}")
    return 0


def store_uri(given: str | None) -> str:
    """The tracking URI to read; a SQLite store that is not there is an error (MLflow would create an empty one,
    and a typo would look like "no runs")."""
    from mimo_ds.tracking import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(given)
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if scheme and scheme.split("+")[0] not in _STORE_SCHEMES:  # postgresql+psycopg2:// names a driver too
        raise InputError(f"tracking URI {uri!r}: {scheme}:// is not an MLflow store (use one of "
                         f"{', '.join(f'{s}://' for s in _STORE_SCHEMES)})")
    if not scheme and Path(uri).is_file():
        raise InputError(f"tracking URI {uri!r} is a file; for a SQLite store write sqlite:///{Path(uri).resolve()}")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise MissingInput(f"no MLflow database at {db}; run from the training folder or pass --tracking-uri")
    return uri


def run_ui(args: argparse.Namespace) -> int:
    """Replace this process with `mlflow ui`, so Ctrl-C and SIGTERM reach the server directly.

    MLflow's job runner (a dozen background consumers for its GenAI features) is off unless the user turns it on:
    browsing runs does not use it, and on a login node or laptop it costs more than the UI itself.
    """
    uri = store_uri(args.tracking_uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached: execv does not return


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m mimo_ds.compare`), the same sub-commands as under `mimo-ds`."""
    parser = argparse.ArgumentParser(prog="mimo-ds")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return report_errors(lambda: args.func(args))
