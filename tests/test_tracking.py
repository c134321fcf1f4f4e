"""Tracker in one process against a real SQLite store: defaults, params, tags, artifacts, async metrics, no-op."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient

from mimo_ds.tracking import (
    URI_FROM_DEFAULT,
    URI_FROM_ENV,
    URI_FROM_EXPLICIT,
    Tracker,
    flatten_params,
    resolve_tracking_uri,
    sanitize_name,
    tracking_uri_choice,
)


def _cfg(**overrides) -> SimpleNamespace:
    fields = dict(enabled=True, tracking_uri=None, experiment="mimo-ds", run_name=None, tags={}, system_metrics=False,
                  async_logging=True)
    return SimpleNamespace(**{**fields, **overrides})


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """An initialised empty store: creating MLflow's tables takes seconds, copying the file does not."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workdir(tmp_path, monkeypatch, store_template) -> Path:
    """A fresh working directory holding an empty store, with no tracking URI in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    return tmp_path


def test_sanitize_name_replaces_at_and_forbidden_characters():
    assert sanitize_name("mlir/ndcg@20") == "mlir/ndcg_at_20"
    assert sanitize_name("/loss (distill)") == "loss _distill_"
    assert sanitize_name("lr:group0") == "lr_group0"
    with pytest.raises(ValueError):
        sanitize_name("@" * 300)


def test_flatten_params_nests_with_dots_and_keeps_lists_whole():
    tree = {"model": {"student": {"name": "xlmr", "dim": 384}, "pool": "mean"}, "langs": ["de", "fr"], "none": None,
            "empty": {}}
    assert flatten_params(tree) == {"model.student.name": "xlmr", "model.student.dim": "384", "model.pool": "mean",
                                    "langs": '["de", "fr"]', "none": "None", "empty": "{}"}


def test_default_store_is_sqlite_in_cwd_and_env_or_config_override_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(None) == "http://mlflow.example:5000"
    assert resolve_tracking_uri("sqlite:////data/runs.db") == "sqlite:////data/runs.db"


def test_the_choice_names_the_setting_that_won_and_a_launchers_default_comes_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    beside = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking_uri_choice(None, beside) == (beside, URI_FROM_DEFAULT)
    assert tracking_uri_choice(None) == (f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}", URI_FROM_DEFAULT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri_choice(None, beside) == ("http://mlflow.example:5000", URI_FROM_ENV)
    assert tracking_uri_choice("file:///x", beside) == ("file:///x", URI_FROM_EXPLICIT)


def test_start_logs_params_tags_artifacts_and_async_metrics(workdir):
    ds_config = workdir / "zero3.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    tracker = Tracker.start(
        _cfg(run_name="stage1-mimo", tags={"team": "ir", "mimo.stage": "0"}),
        params={"world_size": 8, "train": {"lr": 2e-5, "stage": 1}},
        tags={"mimo.stage": "1", "mimo.objective": "distill"},
        artifacts={"run_config.yaml": {"train": {"lr": 2e-5}}, "ds_config": str(ds_config), "filter_report": None},
    )
    steps = 25
    for step in range(steps):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1), "mlir/ndcg@20": step / 100}, step=step)
    tracker.end()

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "stage1-mimo"
    params = run.data.params
    assert params["world_size"] == "8" and params["train.lr"] == "2e-05" and params["train.stage"] == "1"
    assert params["hostname"] == socket.gethostname()
    assert params["version.torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]
    assert run.data.tags["mimo.stage"] == "1", "trainer tags win over config tags"
    assert run.data.tags["team"] == "ir" and run.data.tags["mimo.objective"] == "distill"
    if "git.commit" in params:
        assert run.data.tags["mlflow.source.git.commit"] == params["git.commit"]

    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(steps)]
    assert run.data.metrics["mlir/ndcg_at_20"] == pytest.approx(0.24)

    artifact_dir = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(workdir), "artifacts live beside the SQLite store"
    assert yaml.safe_load((artifact_dir / "run_config.yaml").read_text()) == {"train": {"lr": 2e-5}}
    assert json.loads((artifact_dir / "ds_config.json").read_text()) == {"zero_optimization": {"stage": 3}}
    assert sorted(p.name for p in artifact_dir.iterdir()) == ["ds_config.json", "run_config.yaml"]


def test_stage2_records_parent_and_later_calls_reach_the_run(workdir):
    parent = Tracker.start(_cfg(), params={}, tags={"mimo.stage": "1"})
    parent.end()
    child = Tracker.start(_cfg(), params={}, tags={"mimo.stage": "2"}, parent_run_id=parent.run_id)
    child.set_tags({"mimo.lambda": "0.2"})
    child.log_dict({"skipped": {"too_long": 3}}, "filter_report")
    note = workdir / "notes.txt"
    note.write_text("hello")
    child.log_artifact(note, artifact_path="extra")
    (workdir / "plots").mkdir()
    (workdir / "plots" / "pairs.txt").write_text("de-en")
    child.log_artifact(workdir / "plots", artifact_path="plots")
    child.end(status="FAILED")
    child.end()  # idempotent: a second end must not flip the status

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(child.run_id)
    assert run.data.tags["mimo.parent_run"] == parent.run_id
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["mimo.lambda"] == "0.2"
    assert run.info.status == "FAILED"
    paths = {a.path for folder in (None, "extra", "plots") for a in client.list_artifacts(child.run_id, folder)}
    assert {"filter_report.json", "extra/notes.txt", "plots/pairs.txt"} <= paths


def test_missing_artifact_fails_before_any_run_exists(workdir):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tracker.start(_cfg(experiment="e"), params={}, tags={}, artifacts={"report": str(workdir / "nope.json")})
    assert MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_experiment_by_name("e") is None


def test_disabled_tracker_is_a_silent_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.start(_cfg(enabled=False), params={"a": 1}, tags={})
    assert tracker.run_id is None
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_dict({"a": 1}, "x.json")
    tracker.log_artifact(tmp_path)
    tracker.set_tags({"k": "v"})
    tracker.end()
    assert list(tmp_path.iterdir()) == [], "a disabled tracker must not create a store"


def test_un_initialised_multi_process_launch_is_refused(workdir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="init_process_group"):
        Tracker.start(_cfg(), params={}, tags={})


def test_without_mlflow_a_disabled_run_starts_and_an_enabled_one_is_named(tmp_path):
    """A machine without MLflow (the lent GPU image) trains with tracking off; with tracking on it is told why not."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        sys.modules["mlflow"] = None  # import mlflow now raises ImportError
        from mimo_ds.config import TrackingConfig
        from mimo_ds.tracking import Tracker
        Tracker.start(TrackingConfig(enabled=False), params={}, tags={})
        try:
            Tracker.start(TrackingConfig(enabled=True), params={}, tags={})
        except ImportError as err:
            print(err)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert "tracking is enabled but MLflow cannot be imported" in done.stdout
    assert "tracking.enabled=false" in done.stdout
