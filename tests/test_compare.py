"""`mimo-ds compare` over a real SQLite store holding three runs (stage 1, MIMO stage 2, an XLCO baseline)."""

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

import pytest
from matplotlib.image import imread
from mlflow import MlflowClient
from ports import free_port

from mimo_ds.compare.cli import main
from mimo_ds.compare.plots import scatter_label
from mimo_ds.compare.selection import RunSelection, SelectionError, build_filter, select_runs
from mimo_ds.compare.table import build_table, choose_metrics
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
    labels = [scatter_label(run) for run in select_runs(MlflowClient(uri), RunSelection(("sweep",)))]
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
