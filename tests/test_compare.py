"""`mimo-ds compare` over a real SQLite store holding three runs (stage 1, MIMO stage 2, an XLCO baseline), and over
one whose arms repeat over seeds (mean ± standard deviation against numpy, error bars read off the figures)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import imread
from mlflow import MlflowClient
from ports import free_port

from mimo_ds.compare.aggregate import TAG_ARM, TAG_SEED, aggregate, format_stat, mean_std, separated
from mimo_ds.compare.cli import main
from mimo_ds.compare.plots import alignment_uniformity_figure, ndcg_figure, scatter_label
from mimo_ds.compare.selection import RunSelection, SelectionError, build_filter, select_runs
from mimo_ds.compare.table import build_table, choose_metrics, group_arms
from mimo_ds.tracking import Tracker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 12

# name → (tags, metric histories (one value per step) and final-only metrics); values are made up but distinct.
RUNS = {
    "s1-distill": ({"mimo.stage": "1", "mimo.objective": "distill", "mimo.group": "mimo"},
                   {"loss/total": [2.0 - 0.1 * s for s in range(STEPS)],
                    "loss/distill": [2.0 - 0.1 * s for s in range(STEPS)]},
                   {"mlir/ndcg@20": 0.41, "miracl/ndcg@20": 0.38, "mlir/alignment": 0.9, "mlir/uniformity": -2.1,
                    "system/cpu_utilization_percentage": 50.0}),
    "s2-mimo": ({"mimo.stage": "2", "mimo.objective": "mimo", "mimo.lambda": "0.2", "mimo.group": "mimo"},
                {"loss/total": [1.5 - 0.05 * s for s in range(STEPS)],
                 "loss/infonce": [3.0 - 0.2 * s for s in range(STEPS)],
                 "loss/distill": [0.5 - 0.01 * s for s in range(STEPS)]},
                {"mlir/ndcg@20": 0.55, "miracl/ndcg@20": 0.50, "mlir/alignment": 0.6, "mlir/uniformity": -3.0}),
    "s2-xlco": ({"mimo.stage": "2", "mimo.objective": "xlco", "mimo.lambda": "1.0", "mimo.group": "baselines"},
                {"loss/total": [1.8 - 0.07 * s for s in range(STEPS)],
                 "loss/infonce": [1.8 - 0.07 * s for s in range(STEPS)]},
                {"mlir/ndcg@20": 0.48, "miracl/ndcg@20": 0.47, "mlir/alignment": 0.7, "mlir/uniformity": -2.5}),
}


def _final(name: str, metric: str) -> float:
    _, histories, finals = RUNS[name]
    return histories[metric][-1] if metric in histories else finals[metric.replace("_at_", "@")]


def _cfg(uri: str, experiment: str, run_name: str) -> SimpleNamespace:
    return SimpleNamespace(enabled=True, tracking_uri=uri, experiment=experiment, run_name=run_name, tags={},
                           system_metrics=False, async_logging=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """The three runs in experiment `sweep`, plus one in `other`; returns the URI and run ids by name."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    ids: dict[str, str] = {}
    for name, (tags, histories, finals) in RUNS.items():
        parent = ids["s1-distill"] if tags["mimo.stage"] == "2" else None
        tracker = Tracker.start(_cfg(uri, "sweep", name), params={"objective": tags["mimo.objective"]}, tags=tags,
                                parent_run_id=parent)
        for step in range(STEPS):
            tracker.log_metrics({key: values[step] for key, values in histories.items()}, step=step)
        tracker.log_metrics(finals, step=STEPS)
        tracker.end()
        ids[name] = tracker.run_id
    other = Tracker.start(_cfg(uri, "other", "elsewhere"), params={}, tags={"mimo.stage": "2"})
    other.log_metrics({"loss/total": 9.0}, step=0)
    other.end()
    ids["elsewhere"] = other.run_id
    return uri, ids


def _names(runs) -> list[str]:
    return [run.info.run_name for run in runs]


def test_selection_by_experiment_tags_and_run_ids(store):
    uri, ids = store
    client = MlflowClient(uri)
    assert _names(select_runs(client, RunSelection(("sweep",)))) == ["s1-distill", "s2-mimo", "s2-xlco"]
    assert _names(select_runs(client, RunSelection(("sweep",), {"mimo.stage": "2"}))) == ["s2-mimo", "s2-xlco"]
    both = RunSelection(("sweep",), {"mimo.stage": "2", "mimo.group": "mimo"})
    assert _names(select_runs(client, both)) == ["s2-mimo"]
    by_id = RunSelection(run_ids=(ids["s2-xlco"], ids["elsewhere"]))
    assert _names(select_runs(client, by_id)) == ["s2-xlco", "elsewhere"], "run ids search every experiment"
    assert _names(select_runs(client, RunSelection(("sweep", "other"), {"mimo.stage": "2"}))) == [
        "s2-mimo", "s2-xlco", "elsewhere"]


def test_selection_errors_name_what_is_missing(store):
    uri, ids = store
    client = MlflowClient(uri)
    with pytest.raises(SelectionError, match="no experiment named nope; the store has: .*sweep"):
        select_runs(client, RunSelection(("nope",)))
    with pytest.raises(SelectionError, match="deadbeef"):
        select_runs(client, RunSelection(("sweep",), run_ids=(ids["s2-mimo"], "deadbeef")))
    with pytest.raises(SelectionError, match="single quote"):
        build_filter(RunSelection(tags={"k": "it's"}))


def test_default_metrics_and_table_values_are_the_final_logged_values(store):
    uri, _ = store
    runs = select_runs(MlflowClient(uri), RunSelection(("sweep",)))
    metrics = choose_metrics(runs)
    assert metrics == ["loss/distill", "loss/infonce", "loss/total", "miracl/ndcg_at_20", "mlir/ndcg_at_20"]
    table = build_table(runs, metrics)
    for run, row in zip(table.runs, table.values):
        name = run.info.run_name
        _, histories, finals = RUNS[name]
        for metric, value in zip(metrics, row):
            logged = metric in histories or metric.replace("_at_", "@") in finals
            assert value == (pytest.approx(_final(name, metric)) if logged else None), (name, metric)
    assert table.values[0][1] is None, "s1-distill logged no InfoNCE loss"
    assert choose_metrics(runs, ["mlir/ndcg@20", "typo", "loss/*"]) == [
        "mlir/ndcg_at_20", "typo", "loss/distill", "loss/infonce", "loss/total"]
    grouped = build_table(runs, metrics, group_by="mimo.group")
    assert _names(grouped.runs) == ["s2-xlco", "s1-distill", "s2-mimo"]


def test_compare_command_prints_the_selected_values(store, capsys, monkeypatch):
    uri, _ = store
    monkeypatch.setenv("COLUMNS", "250")
    code = main(["compare", "--tracking-uri", uri, "-e", "sweep", "--tag", "stage=2",
                 "--metrics", "mlir/ndcg@20,loss/total"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert set(rows) == {"s2-mimo", "s2-xlco"}
    assert re.search(r"0\.5500\s*│\s*0\.9500", rows["s2-mimo"]), rows["s2-mimo"]
    assert re.search(r"0\.4800\s*│\s*1\.0300", rows["s2-xlco"]), rows["s2-xlco"]


def test_mimo_ds_command_line_has_compare_and_ui():
    from mimo_ds.cli import build_parser

    args = build_parser().parse_args(["compare", "-t", "objective=mimo", "--tag", "team=ir", "--group-by", "lambda"])
    assert args.func.__name__ == "run_compare"
    assert args.tag == [("mimo.objective", "mimo"), ("team", "ir")] and args.group_by == "mimo.lambda"
    ui = build_parser().parse_args(["ui"])
    assert ui.func.__name__ == "run_ui" and ui.host == "127.0.0.1"


def test_compare_command_exit_codes(store, tmp_path, capsys):
    uri, _ = store
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", uri, "-e", "sweep", "--tag", "stage=9"]) == 1
    assert main(["compare", "--tracking-uri", uri, "-e", "missing"]) == 2
    assert not (tmp_path / "none.db").exists(), "compare must not create an empty store"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> Path:
    uri, _ = store
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["compare", "--tracking-uri", uri, "-e", "sweep", "--html", str(path)]) == 0
    return path


def test_html_report_holds_every_run_and_inlined_png_figures(store, report):
    _, ids = store
    html = report.read_text()
    for name in RUNS:
        assert ids[name] in html and name in html
    assert ids["elsewhere"] not in html
    assert "0.5500" in html and "0.4100" in html
    parser = _Images()
    parser.feed(html)
    assert parser.external == [], "the report must be self-contained"
    # loss curves for stage 1 and stage 2, nDCG@20 bars, alignment-uniformity scatter
    assert len(parser.sources) == 4
    for src in parser.sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix):], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        pixels = imread(io.BytesIO(png))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0


def test_scatter_points_are_labelled_by_objective_and_lambda(store):
    uri, _ = store
    labels = [scatter_label(run.data.tags, run.info.run_name)
              for run in select_runs(MlflowClient(uri), RunSelection(("sweep",)))]
    assert labels == ["distill", "mimo λ=0.2", "xlco λ=1.0"]


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian/Ubuntu: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2600",
                    f"--screenshot={shot}", report.as_uri()],
                   check=True, capture_output=True, timeout=90)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2600, 1400)
    # Saturated pixels only come from the plots (text and tables are grey): the inlined PNGs were decoded and drawn.
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.005, "no coloured plot pixels in the screenshot"


@pytest.mark.slow
def test_ui_serves_the_same_store_on_localhost(store):
    uri, _ = store
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mimo_ds.compare", "ui", "--tracking-uri", uri,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui did not answer /health"
                time.sleep(0.5)
        query = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=sweep"
        with urllib.request.urlopen(query, timeout=10) as reply:
            assert b'"name": "sweep"' in reply.read().replace(b'":"', b'": "')
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_mean_and_std_over_seeds_are_numpys(n):
    """Hand-made per-seed metric dicts (fresh random values; one metric missing from one seed): the mean and the sample
    standard deviation (ddof=1) of each metric equal numpy's over the seeds that logged it."""
    rng = np.random.default_rng()
    values = rng.normal(0.5, 0.2, size=(n, 2))
    per_seed = [{"a/ndcg_at_20": float(v[0]), "a/alignment": float(v[1])} for v in values]
    del per_seed[1]["a/alignment"]
    stats = aggregate(per_seed)
    assert list(stats) == ["a/ndcg_at_20", "a/alignment"]
    assert stats["a/ndcg_at_20"].mean == pytest.approx(np.mean(values[:, 0]), abs=1e-12)
    assert stats["a/ndcg_at_20"].std == pytest.approx(np.std(values[:, 0], ddof=1), abs=1e-12)
    kept = np.delete(values[:, 1], 1)
    assert stats["a/alignment"].n == n - 1
    assert stats["a/alignment"].mean == pytest.approx(np.mean(kept), abs=1e-12)
    assert stats["a/alignment"].std == pytest.approx(np.std(kept, ddof=1), abs=1e-12)


def test_one_run_has_no_spread_and_nan_stays_nan():
    one = mean_std([0.25])
    assert (one.mean, one.std, one.n) == (0.25, None, 1)
    assert format_stat(one) == "0.2500 ± n/a" and format_stat(None) == "–"
    assert format_stat(mean_std([0.5, 0.25])) == f"0.3750 ± {np.std([0.5, 0.25], ddof=1):.4f}"
    assert np.isnan(mean_std([0.5, float("nan")]).mean)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_a_difference_is_claimed_only_beyond_both_spreads():
    """Hand-worked: [0.50, 0.52, 0.54] has mean 0.52, s.d. 0.02; [0.45, 0.46, 0.47] mean 0.46, s.d. 0.01. Their
    gap 0.06 exceeds 0.03; against [0.48, 0.50, 0.52] (0.50 ± 0.02) the gap 0.02 does not exceed 0.04."""
    a, b, c = mean_std([0.50, 0.52, 0.54]), mean_std([0.45, 0.46, 0.47]), mean_std([0.48, 0.50, 0.52])
    assert separated(a, b) is True and separated(b, a) is True
    assert separated(a, c) is False
    start = mean_std([0.505])  # deterministic, evaluated once: exact against an arm with a spread
    assert separated(a, start) is False and separated(b, start) is True
    assert separated(start, mean_std([0.9])) is None  # two single runs: nothing known about the noise
    assert separated(a, mean_std([0.1, float("nan")])) is None


# arm → (its tags, per-seed (seed, nDCG@20, alignment, uniformity)); the start is one untagged-seed evaluation.
SEEDED = {
    "start": ({"mimo.stage": "0", "mimo.objective": "start"}, [(None, 0.61, 0.17, -0.64)]),
    "xlco": ({"mimo.stage": "2", "mimo.objective": "xlco"},
             [("42", 0.80, 0.18, -1.10), ("43", 0.78, 0.19, -1.15), ("44", 0.83, 0.16, -1.05)]),
    "mimo_lam0.2": ({"mimo.stage": "2", "mimo.objective": "mimo", "mimo.lambda": "0.2"},
                    [("42", 0.55, 0.05, -0.60), ("43", 0.52, 0.04, -0.66), ("44", 0.57, 0.06, -0.58)]),
}


@pytest.fixture(scope="module")
def seeded(store) -> str:
    """Seven runs in experiment `seeds` of the same store: the start once, XLCO and MIMO three seeds each, started
    seed by seed."""
    uri, _ = store
    order = [(arm, i) for i in range(3) for arm in SEEDED if i < len(SEEDED[arm][1])]
    for arm, i in order:
        tags, per_seed = SEEDED[arm]
        seed, ndcg, alignment, uniformity = per_seed[i]
        run_tags = {**tags, TAG_ARM: arm, **({TAG_SEED: seed} if seed else {})}
        tracker = Tracker.start(_cfg(uri, "seeds", f"{arm}-{seed or 'once'}"), params={}, tags=run_tags)
        tracker.log_metrics({"mlir/ndcg@20": ndcg, "mlir/alignment": alignment, "mlir/uniformity": uniformity}, step=1)
        tracker.end()
    return uri


def test_compare_aggregates_an_arm_over_its_seeds(seeded, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["compare", "--tracking-uri", seeded, "-e", "seeds", "--metrics", "mlir/ndcg@20"]) == 0
    out = capsys.readouterr().out
    assert "arms over seeds" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    for arm, (_, per_seed) in SEEDED.items():
        ndcg = [v[1] for v in per_seed]
        spread = "n/a" if len(ndcg) == 1 else f"{np.std(ndcg, ddof=1):.4f}"
        assert f"{np.mean(ndcg):.4f} ± {spread}" in rows[arm], rows[arm]
    assert "42,43,44" in rows["xlco"]
    assert sum("xlco-4" in line for line in out.splitlines()) == 3, "the per-run table keeps every seed's run"


def _errorbars(ax) -> list[tuple[float, float]]:
    """(centre, half-length) of each vertical error bar drawn by ax.bar(yerr=...); NaN where none is drawn."""
    out = []
    for container in ax.containers:
        if not isinstance(container, BarContainer):
            continue
        for segment in container.errorbar.lines[2][0].get_segments():
            if len(segment) == 0:
                out.append((float("nan"), float("nan")))
                continue
            (_, low), (_, high) = segment
            out.append(((low + high) / 2, (high - low) / 2))
    return out


def test_figures_draw_each_arms_mean_with_its_spread(seeded):
    arms = group_arms(select_runs(MlflowClient(seeded), RunSelection(("seeds",))))
    assert [arm.label for arm in arms] == list(SEEDED)
    fig = ndcg_figure(arms)
    ax = fig.axes[0]
    heights = [c.patches[0].get_height() for c in ax.containers if isinstance(c, BarContainer)]
    bars = _errorbars(ax)
    for index, (_, per_seed) in enumerate(SEEDED.values()):
        ndcg = [v[1] for v in per_seed]
        assert heights[index] == pytest.approx(np.mean(ndcg))
        centre, half = bars[index]
        if len(ndcg) == 1:
            assert np.isnan(half), "one run: no error bar"
        else:
            assert (centre, half) == (pytest.approx(np.mean(ndcg)), pytest.approx(np.std(ndcg, ddof=1)))
    scatter = alignment_uniformity_figure(arms).axes[0]
    drawn = {}
    for container in scatter.containers:  # ax.errorbar: (point, caps, (x bars, y bars))
        (x,), (y,) = container.lines[0].get_data()
        x_bar, y_bar = container.lines[2]
        drawn[round(float(x), 6)] = (y, x_bar.get_segments()[0], y_bar.get_segments()[0])
    for _, per_seed in SEEDED.values():
        x = np.mean([v[2] for v in per_seed])
        y, x_segment, y_segment = drawn[round(float(x), 6)]
        assert y == pytest.approx(np.mean([v[3] for v in per_seed]))
        if len(per_seed) > 1:
            assert np.ptp(x_segment[:, 0]) / 2 == pytest.approx(np.std([v[2] for v in per_seed], ddof=1))
            assert np.ptp(y_segment[:, 1]) / 2 == pytest.approx(np.std([v[3] for v in per_seed], ddof=1))


def test_html_report_holds_the_over_seeds_table(seeded, tmp_path):
    path = tmp_path / "report.html"
    assert main(["compare", "--tracking-uri", seeded, "-e", "seeds", "--html", str(path)]) == 0
    html = path.read_text()
    assert "Arms over seeds" in html and 'id="arms"' in html
    xlco = [v[1] for v in SEEDED["xlco"][1]]
    assert f"{np.mean(xlco):.4f} ± {np.std(xlco, ddof=1):.4f}" in html
    assert "0.6100 ± n/a" in html
