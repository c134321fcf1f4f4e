"""`mimo-ds eval` (score a model folder on benchmark folders) and `mimo-ds benchmark mini` (build the Django one).

Imports stay inside the commands: the `mimo-ds` parser imports this module for every sub-command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from mimo_ds.cli_args import check_fresh_folder, check_output_file, device_name, positive_int
from mimo_ds.errors import ExistingOutput, InputError

SUMMARY = ("ndcg_at_10", "ndcg_at_20", "recall_at_100", "mrr_at_10", "map_at_100", "mrc_at_10", "peer_at_20",
           "alignment", "uniformity", "language_clustering", "xself/ndcg_at_20", "xself/recall_at_100",
           "xself/own_language_share_at_20")


def _pooling(name: str) -> str:
    """`--pooling`: one of `mimo_ds.models.pooling`'s modes or a sentence-transformers name (imported only when given)."""
    from mimo_ds.models.pooling import pooling_mode

    try:
        return pooling_mode(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a model folder on benchmark folders (MLIR, multi-monolingual)")
    ev.add_argument("--model", required=True, type=Path, help="HF or sentence-transformers model folder")
    ev.add_argument("--benchmark", required=True, nargs="+", type=Path, help="benchmark folder(s)")
    ev.add_argument("--out", type=Path, help="write the JSON report here")
    ev.add_argument("--overwrite", action="store_true",
                    help="--out may replace an existing report, and --figures existing PNGs")
    ev.add_argument("--figures", type=Path, help="write one language-clustering PNG per benchmark into this folder")
    ev.add_argument("--batch-size", type=positive_int, default=64)
    ev.add_argument("--k", type=positive_int, nargs="+", default=[10, 20, 100], help="cut-offs for nDCG, Recall, MRR")
    ev.add_argument("--pooling", type=_pooling, metavar="{mean,cls,max,last,lasttoken}",
                    help="override (default: the folder's 1_Pooling config, else mean); lasttoken = last")
    ev.add_argument("--query-prompt", help="override the folder's query prompt")
    ev.add_argument("--passage-prompt", help="override the folder's passage prompt")
    ev.add_argument("--max-length", type=positive_int)
    ev.add_argument("--device", type=device_name, help="cuda, cpu, ... (default: cuda when available)")
    ev.add_argument("--no-pairs", action="store_true", help="skip per (query language, doc language) metrics")
    ev.add_argument("--exclude-self", action=argparse.BooleanOptionalAction, default=None,
                    help="MLIR: also report xself/ metrics, the query's own-language copy removed from the ranking "
                         "and the relevant set (default: the benchmark's exclude_self setting)")
    ev.set_defaults(func=run_eval)

    bm = subparsers.add_parser("benchmark", help="build benchmark folders")
    bsub = bm.add_subparsers(dest="benchmark_command", required=True)
    mini = bsub.add_parser("mini", help="the Django-catalogue mini-benchmark (held-out entries only)")
    mini.add_argument("out", type=Path)
    mini.add_argument("--languages", nargs="+", help="language codes (default: the MIMO 14)")
    mini.add_argument("--protocol", default="mlir", choices=["mlir", "mlir-en", "multi-monolingual"])
    mini.add_argument("--min-words", type=positive_int, default=6)
    mini.add_argument("--min-languages", type=positive_int,
                      help="keep entries translated in at least this many languages (default: all of them)")
    mini.set_defaults(func=run_build_mini)


def run_build_mini(args: argparse.Namespace) -> int:
    from mimo_ds.eval.benchmark import load_benchmark
    from mimo_ds.eval.mini import MIMO_LANGUAGES, build_mini_benchmark

    check_fresh_folder(args.out, "benchmark mini OUT")
    out = build_mini_benchmark(args.out, args.languages or MIMO_LANGUAGES, protocol=args.protocol,
                               min_words=args.min_words, min_languages=args.min_languages)
    bench = load_benchmark(out)
    print(f"{out}: {bench.name}, {len(bench.corpus)} documents, {len(bench.queries)} queries, "
          f"languages {' '.join(bench.languages)}")
    return 0


def _table(title: str, columns: list[str], rows: list[tuple[str, dict[str, float]]]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for label, values in rows:
        table.add_row(label, *(f"{values[c]:.4f}" if c in values else "-" for c in columns))
    return table


def run_eval(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from rich.console import Console

    from mimo_ds.eval.benchmark import load_benchmark
    from mimo_ds.eval.encoding import check_model_folder, load_encoder
    from mimo_ds.eval.geometry import plot_language_clustering
    from mimo_ds.eval.runner import evaluate_benchmark, resolve_exclude_self

    # Every input is checked before the model is loaded or anything is encoded.
    check_model_folder(args.model)
    check_output_file(args.out, "--out")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise ExistingOutput(f"--out {args.out} exists: give another file name, or replace it with --overwrite "
                             "(nothing was changed)")
    if args.figures is not None and args.figures.exists() and not args.figures.is_dir():
        raise InputError(f"--figures {args.figures} is a file; it names a folder for the PNGs")
    benches = [load_benchmark(p) for p in args.benchmark]
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise InputError(f"benchmark names must differ (set `name` in benchmark.json): {names}")
    existing = [str(args.figures / f"{name}.png") for name in names
                if args.figures is not None and (args.figures / f"{name}.png").exists()]
    if existing and not args.overwrite:
        raise ExistingOutput(f"--figures: {', '.join(existing)} exist: give another folder, or replace them with "
                             "--overwrite (nothing was changed)")
    for bench in benches:
        resolve_exclude_self(bench, args.exclude_self)
    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            device = device or f"cuda:{torch.cuda.current_device()}"
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    encoder = load_encoder(args.model, pooling=args.pooling, query_prompt=args.query_prompt,
                           passage_prompt=args.passage_prompt, max_length=args.max_length,
                           batch_size=args.batch_size, device=device)
    console = Console()
    report: dict = {"model": str(args.model.resolve()), "created": datetime.now(timezone.utc).isoformat(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
                    or platform.machine(), "torch": torch.__version__, "python": sys.version.split()[0],
                    "settings": {"batch_size": args.batch_size, "k": args.k, "pooling": encoder.pooling,
                                 "prompts": encoder.prompts, "max_length": encoder.max_length},
                    "benchmarks": {}}
    for bench in benches:
        result = evaluate_benchmark(bench, encoder.encode, batch_size=args.batch_size, k_values=args.k,
                                    per_pair=not args.no_pairs, exclude_self=args.exclude_self, rank=rank,
                                    world_size=world, progress=True)
        if rank != 0:
            continue
        entry = {"protocol": result.protocol, "info": result.info, "metrics": result.metrics}
        if args.figures and result.clustering is not None:
            entry["figure"] = str(plot_language_clustering(result.clustering, args.figures / f"{bench.name}.png",
                                                           title=bench.name))
        report["benchmarks"][bench.name] = entry
        per_lang = [(lang, {m.split("/")[-1]: v for m, v in result.metrics.items()
                            if m.startswith(f"lang/{lang}/")}) for lang in bench.languages]
        console.print(_table(f"{bench.name} by query language", ["ndcg_at_20", "recall_at_100", "mrr_at_10",
                                                                  "mrc_at_10", "peer_at_20", "own_language_share_at_20"],
                             [row for row in per_lang if row[1]]))
    if rank != 0:
        return 0
    console.print(_table(f"{args.model.name}", [c for c in SUMMARY if any(
        c in b["metrics"] for b in report["benchmarks"].values())],
        [(name, b["metrics"]) for name, b in report["benchmarks"].items()]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"report: {args.out}")
    return 0
