"""Tracker.start across 2 gloo ranks: one MLflow run, rank 0's metrics only, per-node system metrics, shared errors."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow import MlflowClient
from ports import free_port

pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 3
OTHER_HOST = "fake-node-1"


def _cfg(uri: str, *, system_metrics: bool) -> SimpleNamespace:
    return SimpleNamespace(enabled=True, tracking_uri=uri, experiment="dist", run_name="two-ranks", tags={"team": "ir"},
                           system_metrics=system_metrics, async_logging=True)


def _worker(rank: int, uri: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    import mimo_ds.tracking as tracking

    if rank == 1:  # pretend rank 1 runs on a second node, so it is its node's system-metrics logger
        tracking._hostname = lambda: OTHER_HOST
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        try:  # rank 0 cannot start the run: every rank must raise rather than wait in the broadcast
            tracking.Tracker.start(_cfg(uri, system_metrics=False), params={}, tags={},
                                   artifacts={"report.json": str(Path(out) / "missing.json")})
        except RuntimeError as exc:
            Path(out, f"error{rank}.txt").write_text(str(exc))
        tracker = tracking.Tracker.start(
            _cfg(uri, system_metrics=True),
            params={"world_size": WORLD, "model": {"student": {"name": "tiny-xlmr", "layers": 2}}},
            tags={"mimo.stage": "1", "mimo.objective": "distill"},
            artifacts={"run_config.yaml": {"seed": 7}},
        )
        for step in range(STEPS):  # every rank logs; only rank 0's values may reach MLflow
            tracker.log_metrics({"train/loss": 10.0 * rank + step, "mlir/ndcg@20": 0.1 * step}, step=step)
        time.sleep(1.0)  # let both nodes' system-metrics monitors sample a few times
        dist.barrier()
        tracker.end()
        dist.barrier()
        Path(out, f"rank{rank}.json").write_text(json.dumps({"run_id": tracker.run_id}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, MlflowClient]:
    """One 2-rank job (spawning is the slow part): a failing start, then a real run with system metrics."""
    out = tmp_path_factory.mktemp("dist")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MASTER_ADDR", "127.0.0.1")
        env.setenv("MASTER_PORT", str(free_port()))
        env.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
        mp.spawn(_worker, args=(uri, str(out)), nprocs=WORLD, join=True)
    return out, MlflowClient(uri)


def test_two_ranks_make_one_run_with_rank0_metrics_and_per_node_system_metrics(job):
    out, client = job
    run_ids = {json.loads((out / f"rank{r}.json").read_text())["run_id"] for r in range(WORLD)}
    assert len(run_ids) == 1, "all ranks must know the same run id"

    experiment = client.get_experiment_by_name("dist")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == list(run_ids), "exactly one MLflow run for the whole job"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "two-ranks"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["model.student.name"] == "tiny-xlmr"
    assert run.data.params["model.student.layers"] == "2"
    assert run.data.params["hostname"] == socket.gethostname()
    assert "version.torch" in run.data.params and "version.mlflow" in run.data.params
    assert run.data.tags["mimo.stage"] == "1" and run.data.tags["team"] == "ir"

    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(STEPS)]  # rank 0's values only
    ndcg = sorted(client.get_metric_history(run.info.run_id, "mlir/ndcg_at_20"), key=lambda m: m.step)
    assert [m.value for m in ndcg] == pytest.approx([0.0, 0.1, 0.2])

    system = [k for k in run.data.metrics if k.startswith("system/")]
    node0 = socket.gethostname().split(".")[0]
    assert any(k.startswith(f"system/{node0}/") for k in system), system
    assert any(k.startswith(f"system/{OTHER_HOST}/") for k in system), "rank 1 logs its own node's system metrics"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["run_config.yaml"]


def test_rank0_failure_raises_on_every_rank_instead_of_hanging(job):
    out, _ = job
    for rank in range(WORLD):
        message = (out / f"error{rank}.txt").read_text()
        assert "missing.json" in message and "rank 0" in message
