"""`mimo-ds shards <format> ...`: corpus → shard folder; `mimo-ds teacher-cache`: shard folder → teacher embeddings.

`register(subparsers)` is called by `mimo_ds.cli`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mimo_ds.cli_args import check_fresh_folder, check_output_file, device_name, positive_int
from mimo_ds.data.filters import DEDUP_MODES, Stage1Filters
from mimo_ds.errors import InputError
from mimo_ds.record_kinds import PAIRS, ROWS, record_kind

# The record kinds a converter can write (a kind declared elsewhere needs its own converter).
CONVERTED_KINDS = (PAIRS.name, ROWS.name)


def _languages(text: str) -> list[str]:
    return [code.strip() for code in text.split(",") if code.strip()]


def _language_codes(text: str) -> list[str]:
    from mimo_ds.data.sources import is_language_code

    codes = _languages(text)
    if bad := [code for code in codes if not is_language_code(code)]:
        raise argparse.ArgumentTypeError(f"not language codes (such as de, pt_BR, zh-Hans): {', '.join(bad)}")
    return codes


def _language_code(text: str) -> str:
    codes = _language_codes(text)
    if len(codes) != 1:
        raise argparse.ArgumentTypeError(f"one language code expected, got {text!r}")
    return codes[0]


def _common(p: argparse.ArgumentParser, languages_required: bool = False, heldout_flag: bool = True) -> None:
    p.add_argument("--out", required=True, type=Path, help="a fresh folder for the shards and index.json")
    p.add_argument("--shard-size", type=positive_int, default=10_000,
                   help="records per shard (many small shards stream best)")
    p.add_argument("--languages", type=_language_codes, required=languages_required, help="comma-separated codes")
    if heldout_flag:
        p.add_argument("--exclude-heldout", action="store_true", help="skip texts of the evaluation split (splits.py)")
    p.add_argument("--seed", type=int, default=42, help="shuffle seed for the written order")
    p.add_argument("--id-prefix", default=None, help="sample id prefix (no dots)")


def _stage1(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stage-1 pair filters (paper defaults; 0 switches a bound off)")
    g.add_argument("--min-chars", type=int, default=10)
    g.add_argument("--max-chars", type=int, default=512)
    g.add_argument("--max-ratio", type=float, default=3.0)
    g.add_argument("--dedup", choices=DEDUP_MODES, default="global", help="English-side first-seen dedup")
    g.add_argument("--cap-per-language", type=int, default=500_000)
    g.add_argument("--identity-pairs", type=int, default=500_000, help="en→en pairs from the first kept English")


def _filters(args: argparse.Namespace) -> Stage1Filters:
    return Stage1Filters(
        min_chars=args.min_chars or None, max_chars=args.max_chars or None, max_ratio=args.max_ratio or None,
        dedup_english=args.dedup, cap_per_language=args.cap_per_language or None,
        identity_pairs=args.identity_pairs, exclude_heldout=args.exclude_heldout, seed=args.seed,
    )


def _done(index_path: Path) -> int:
    index = json.loads(index_path.read_text(encoding="utf-8"))
    report = index.get("filter_report") or {}
    print(f"{index_path}: {index['total']} {index['kind']} in {len(index['shards'])} shards, "
          f"languages {','.join(index['languages'])}; per language kept {report.get('kept')}, dropped "
          f"{report.get('dropped')}" + (f"; rows {report['rows']}" if report.get("rows") else ""))
    for where, errors in (report.get("read_errors") or {}).items():
        print(f"  unreadable in {where}: {errors}")
    if not index["total"]:  # training would refuse this folder later: say so now, with the counts just printed
        raise InputError(f"{index_path}: no record was kept (every input was dropped or unreadable: the counts above "
                         "and the index's filter_report say why)")
    return 0


def _catalogue_paths(spec: str) -> tuple[str, list[Path]]:
    lang, sep, path = spec.partition("=")
    if not sep or not lang:
        raise argparse.ArgumentTypeError(f"--catalogue wants LANG=PATH, got {spec!r}")
    _language_codes(lang)
    root = Path(path)
    paths = sorted(root.rglob("*.po")) + sorted(root.rglob("*.mo")) if root.is_dir() else [root]
    if not paths or not all(p.is_file() for p in paths):
        raise argparse.ArgumentTypeError(f"no .po/.mo catalogue at {path}")
    return lang, paths


def _run(args: argparse.Namespace) -> int:
    from mimo_ds.data import converters, gettext

    fmt, prefix = args.format, args.id_prefix
    check_fresh_folder(args.out, "--out")
    if fmt == "django-demo":
        paths = gettext.build_django_demo_shards(args.out, args.languages or gettext.DEMO_LANGUAGES,
                                                 shard_size=args.shard_size, exclude_heldout=not args.keep_heldout,
                                                 seed=args.seed)
        return max(_done(p) for p in paths.values())
    common = dict(shard_size=args.shard_size, exclude_heldout=args.exclude_heldout, seed=args.seed)
    if fmt == "parallel-sentences":
        return _done(converters.convert_parallel_sentences(
            args.root, args.out, args.languages, filters=_filters(args), shard_size=args.shard_size,
            id_prefix=prefix or "opus", **({"corpora": args.corpora} if args.corpora else {})))
    if fmt == "jsonl":
        return _done(converters.convert_jsonl(
            args.path, args.out, args.kind, languages=args.languages, id_prefix=prefix or "jsonl", lang=args.lang,
            filters=_filters(args) if record_kind(args.kind) is PAIRS else None, **common))
    if fmt == "hf-disk":
        return _done(converters.convert_hf_disk(
            args.path, args.out, args.kind, languages=args.languages, id_prefix=prefix or "hf", split=args.split,
            lang=args.lang, filters=_filters(args) if record_kind(args.kind) is PAIRS else None, **common))
    if fmt == "id-aligned":
        patterns = {k: v for k, v in (("queries", args.queries), ("passages", args.passages), ("pairs", args.pairs)) if v}
        return _done(converters.convert_id_aligned(args.root, args.out, args.languages, id_prefix=prefix or "mmarco",
                                                   **common, **patterns))
    catalogues: dict[str, list[Path]] = {}
    for lang, paths in args.catalogue:
        catalogues.setdefault(lang, []).extend(paths)
    return _done(gettext.build_gettext_shards(
        catalogues, args.out, args.kind, filters=_filters(args) if record_kind(args.kind) is PAIRS else None,
        id_prefix=prefix or "gettext", **common))


def _verify(args: argparse.Namespace) -> int:
    """`mimo-ds shards verify DIR`: 0 when every shard is as the index says, 1 when any is not, 2 for no index."""
    from rich.console import Console
    from rich.table import Table

    from mimo_ds.data.verify import report_json, verify_folder

    console = Console()
    check_output_file(args.json, "--json")
    index, reports = verify_folder(args.folder, args.mode, args.workers, progress=True)
    table = Table(title=f"{index.folder} ({index.kind}, {len(reports)} shards, mode {args.mode})")
    for column in ("shard", "records", "bytes", "status"):
        table.add_column(column, justify="right" if column in ("records", "bytes") else "left")
    for r in reports:
        if r.ok and args.problems:
            continue
        records = f"{'—' if r.records is None else f'{r.records:,}'}/{r.expected:,}"
        size = f"{r.size:,}" if r.size is not None else "—"
        table.add_row(r.name, records, size, r.status if r.ok else f"[red]{r.status}[/red]")
    console.print(table)
    bad = [r for r in reports if not r.ok]
    console.print(f"{len(reports) - len(bad)} of {len(reports)} shards ok" +
                  (f"; [red]{len(bad)} with problems[/red]: {', '.join(r.name for r in bad)}" if bad else ""))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(index, reports, args.mode), indent=1) + "\n", encoding="utf-8")
    return 1 if bad else 0


def _register_verify(formats: argparse._SubParsersAction) -> None:
    from mimo_ds.data.verify import MODES

    p = formats.add_parser("verify", help="check a shard folder against its index.json (sizes, sha256, records)")
    p.add_argument("folder", type=Path, help="a folder written by `mimo-ds shards`")
    p.add_argument("--mode", choices=MODES, default="records",
                   help="size: sizes only; full: and sha256; records (default): and every record")
    p.add_argument("--workers", type=positive_int, default=None, help="processes in parallel (default: one per CPU)")
    p.add_argument("--problems", action="store_true", help="list only the shards with problems")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=_verify)


def _teacher_cache(args: argparse.Namespace) -> int:
    """Read the teacher and data.train from the run config itself, so the cache is made by exactly the teacher the
    run will check it against; seeded like the trainer, so a random-init (tiny) teacher is the trainer's one.

    Every check that can fail runs before a teacher loads or a rank starts: the config, the shards, the output, and
    every part an earlier (killed) run left behind."""
    import torch

    from mimo_ds.config import load_config
    from mimo_ds.data.cache_job import rank_device, run_rank, this_rank
    from mimo_ds.data.cache_parts import PartPlan, finished_parts
    from mimo_ds.data.teacher_cache import DEFAULT_DIR, cache_identity, check_writable
    from mimo_ds.data.verify import read_shard_index
    from mimo_ds.models.fingerprint import fingerprint_of
    from mimo_ds.models.teacher import config_width, teacher_dtype
    from mimo_ds.objectives import objective_class

    cfg = load_config(args.config, args.overrides)
    objective = objective_class(cfg.objective.kind)
    if cfg.teacher is None:
        raise InputError(f"{args.config} has no teacher section ({cfg.objective.kind!r} uses no teacher)")
    index = read_shard_index(cfg.data.train)
    out = args.out or cfg.data.train / DEFAULT_DIR
    check_writable(objective, index, out)
    plan = PartPlan(index.total, args.window, args.part_size)
    if args.plan is not None:
        print("\n".join([f"cache folder: {out.resolve()}", *plan.describe(args.plan)]))
        return 0
    me = this_rank()
    if args.nproc > 1 and me.world > 1:
        raise InputError(f"--nproc starts its own ranks; this process is already rank {me.rank} of {me.world} "
                         "(leave --nproc out under torchrun, deepspeed or srun)")
    device = rank_device(args.device, me)
    dtype = teacher_dtype(cfg.teacher.dtype, torch.device(device))
    identity = cache_identity(objective, index, fingerprint_of(cfg.teacher, config_width(cfg.teacher)), dtype,
                              args.window)
    finished_parts(out, plan, identity)  # a part from other inputs is refused here, before any rank starts
    if args.nproc > 1:
        from mimo_ds.ranks import combined_status, start_ranks, wait_ranks

        rank_args = ["-m", "mimo_ds.cli", "teacher-cache", "--config", str(args.config), "--out", str(out),
                     "--window", str(args.window), "--part-size", str(args.part_size)]
        rank_args += [f"--set={item}" for item in args.overrides] + (["--device", args.device] if args.device else [])
        return combined_status(wait_ranks(start_ranks(rank_args, args.nproc, {})))
    return run_rank(cfg, objective, out, plan, identity, me, device)


def _register_teacher_cache(subparsers: argparse._SubParsersAction) -> None:
    from mimo_ds.data.cache_parts import DEFAULT_PART_SIZE, DEFAULT_WINDOW

    p = subparsers.add_parser("teacher-cache", help="encode the teacher roles of the run's objective with its teacher "
                                                    "(one process, --nproc N, or every rank under torchrun/srun)")
    p.add_argument("--config", required=True, help="run config YAML: its teacher section and data.train are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="cache folder (default: <data.train>/teacher_cache)")
    p.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1, ... (default: cuda when available; under "
                                                      "a launcher, cuda is each rank's cuda:LOCAL_RANK)")
    p.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW,
                   help="write positions whose texts are sorted by length together; forwards take "
                        "teacher.mini_batch of them (default %(default)s)")
    p.add_argument("--part-size", type=positive_int, default=DEFAULT_PART_SIZE,
                   help="write positions per part, a multiple of --window: the unit of resumption and of the ranks' "
                        "slices (default %(default)s)")
    p.add_argument("--nproc", type=positive_int, default=1, help="ranks to start on this machine (like torchrun)")
    p.add_argument("--plan", type=positive_int, metavar="WORLD",
                   help="print each rank's parts and write positions for WORLD ranks, and exit (loads no teacher)")
    # the deepspeed launcher appends --local_rank=N; the rank is read from LOCAL_RANK, which it sets too
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_teacher_cache)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_teacher_cache(subparsers)
    shards = subparsers.add_parser("shards", help="convert a parallel corpus to WebDataset shards + index.json, or "
                                                  "verify a shard folder")
    formats = shards.add_subparsers(dest="format", required=True)

    p = formats.add_parser("parallel-sentences", help="sentence-transformers/parallel-sentences TSV.gz → pairs")
    p.add_argument("root", type=Path)
    _common(p, languages_required=True)
    _stage1(p)
    p.add_argument("--corpora", type=_languages, help="corpus folders in dedup order (default: the paper's 8)")

    for name, what in (("jsonl", "JSONL file"), ("hf-disk", "datasets.save_to_disk folder")):
        p = formats.add_parser(name, help=f"{what} → pairs or rows")
        p.add_argument("path", type=Path)
        p.add_argument("--kind", choices=CONVERTED_KINDS, required=True)
        p.add_argument("--lang", type=_language_code, help="pairs: the language when records carry none")
        if name == "hf-disk":
            p.add_argument("--split", default="train")
        _common(p)
        _stage1(p)

    p = formats.add_parser("id-aligned", help="mMARCO-style per-language queries/passages joined over a pairs file")
    p.add_argument("root", type=Path)
    p.add_argument("--queries", help="path pattern under root with {lang} or {name} (default: mMARCO google layout)")
    p.add_argument("--passages", help="path pattern under root with {lang} or {name}")
    p.add_argument("--pairs", help="qid pid[ ...] file under root (default triples.train.ids.small.tsv)")
    _common(p, languages_required=True)

    p = formats.add_parser("gettext", help=".po/.mo catalogues per language → pairs or rows")
    p.add_argument("--catalogue", type=_catalogue_paths, action="append", required=True, metavar="LANG=PATH",
                   help="a catalogue file or a folder searched for them; repeat per language")
    p.add_argument("--kind", choices=CONVERTED_KINDS, required=True)
    _common(p)
    _stage1(p)

    p = formats.add_parser("django-demo", help="the demo corpus from the installed Django's catalogues")
    _common(p, heldout_flag=False)
    p.add_argument("--keep-heldout", action="store_true", help="keep the evaluation split (default: skip it)")
    p.set_defaults(shard_size=200)
    shards.set_defaults(func=_run)
    _register_verify(formats)
