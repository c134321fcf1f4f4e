"""MLflow adapter for the trainer: one run per job, however many ranks and nodes the job has.

Why this shape: launching one MLflow run per GPU is the most common complaint about MLflow in distributed training
(mlflow issue #11782), and only rank 0 knowing the run id is the second (anemoi-core issue #240). So `Tracker.start` is collective:
rank 0 creates the run and broadcasts its id; other ranks never log training metrics, and one rank per node may
attach to the same run to log that node's system metrics under a node id.

The adapter talks to an explicit `MlflowClient` rather than MLflow's fluent API, so it never depends on (or
clobbers) a process-global "active run" and cannot fail because one is already active.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

try:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.async_logging.run_operations import RunOperations
    from mlflow.utils.validation import (
        MAX_ENTITY_KEY_LENGTH,
        MAX_METRICS_PER_BATCH,
        MAX_PARAM_VAL_LENGTH,
        MAX_PARAMS_TAGS_PER_BATCH,
        MAX_TAG_VAL_LENGTH,
    )
except ImportError as _missing:  # a run with `tracking.enabled: false` needs no MLflow (e.g. a GPU image without it)
    _MLFLOW_MISSING: ImportError | None = _missing
    # MLflow 3's limits, for the name helpers that work without it
    MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH = 250, 1000, 6000
    MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH = 100, 8000
else:
    _MLFLOW_MISSING = None

log = logging.getLogger(__name__)

#: Tags the trainer sets and `mimo-ds compare` groups and labels by.
TAG_STAGE = "mimo.stage"
TAG_OBJECTIVE = "mimo.objective"
TAG_RECIPE = "mimo.recipe"
TAG_LAMBDA = "mimo.lambda"  # MIMO's λ, the `lambda` of the sweep tags below
#: The names of the settings the run's objective declares swept (`ObjectiveSettings.swept`), comma-separated; each
#: setting's value is tagged `mimo.<name>`.
TAG_SWEPT = "mimo.swept"
TAG_GROUP = "mimo.group"
TAG_PARENT = "mimo.parent_run"
#: "true" on a run stopped by a signal after writing a checkpoint (status KILLED): `--resume auto` continues it.
TAG_RESUMABLE = "mimo.resumable"
TAG_CHECKPOINT = "mimo.checkpoint"  # the newest checkpoint folder of the run
TAG_RESUMES = "mimo.resumes"  # how many times the run was continued from a checkpoint
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
#: `mimo-ds train --nproc` names a file in this variable; the trainer's rank 0 writes its run id and store there.
RUN_ID_FILE_ENV = "MIMO_RUN_ID_FILE"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"

#: Packages whose versions decide whether two runs are comparable; absent ones are skipped.
VERSIONED_PACKAGES = ("torch", "deepspeed", "transformers", "triton", "mlflow")

# Async metric batches kept in flight before the oldest is waited for: bounds memory on long runs and surfaces a
# failing store within a few steps instead of at the very end.
_MAX_PENDING_BATCHES = 64

_INVALID_NAME_CHARS = re.compile(r"[^\w./\- ]")


class TrackingSettings(Protocol):
    """The fields `Tracker.start` reads; `mimo_ds.config.TrackingConfig` has them (duck-typed on purpose)."""

    enabled: bool
    tracking_uri: str | None
    experiment: str
    run_name: str | None
    tags: Mapping[str, str]
    system_metrics: bool
    async_logging: bool


def sweep_tags(swept: Mapping[str, str]) -> dict[str, str]:
    """A run's tags for its objective's swept settings (name → value, `ObjectiveSettings.swept_values`)."""
    if not swept:
        return {}
    return {TAG_SWEPT: ",".join(swept), **{f"mimo.{name}": value for name, value in swept.items()}}


def swept_of(tags: Mapping[str, str]) -> dict[str, str]:
    """Name → value of the swept settings a run's tags hold (what `sweep_tags` wrote)."""
    names = [name for name in tags.get(TAG_SWEPT, "").split(",") if name]
    return {name: tags[f"mimo.{name}"] for name in names if f"mimo.{name}" in tags}


#: Which setting `tracking_uri_choice` took the store from, in the order they win (the launch plan prints them).
URI_FROM_EXPLICIT = "the recipe's tracking.tracking_uri"
URI_FROM_ENV = "MLFLOW_TRACKING_URI"
URI_FROM_DEFAULT = "the default"


def tracking_uri_choice(explicit: str | None = None, default: str | None = None) -> tuple[str, str]:
    """Where runs go, and which setting said so (`URI_FROM_*`): the explicit URI (the recipe's, or a command's
    `--tracking-uri`), else $MLFLOW_TRACKING_URI, else `default`, else `sqlite:///<cwd>/mlflow.db`.

    The last is made absolute here so that a later `chdir`, or `mimo-ds compare` run from the same folder, reaches
    the same database. `default` is a launcher's own (slurm/ puts the store beside the output folder).
    """
    if explicit:
        return explicit, URI_FROM_EXPLICIT
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env, URI_FROM_ENV
    return default or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}", URI_FROM_DEFAULT


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """Where runs go: `tracking_uri_choice`'s URI."""
    return tracking_uri_choice(explicit)[0]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def sanitize_name(name: str) -> str:
    """A metric or param name MLflow accepts: '@' → '_at_', other forbidden characters → '_'.

    MLflow rejects '@' (so `ndcg@20` becomes `ndcg_at_20`) and, on Windows stores, ':'; leading slashes would make
    the name resolve like an absolute path, which MLflow also rejects.
    """
    cleaned = _INVALID_NAME_CHARS.sub("_", name.replace("@", "_at_")).lstrip("/")
    if not cleaned or len(cleaned) > MAX_ENTITY_KEY_LENGTH:
        raise ValueError(f"cannot turn {name!r} into an MLflow name (empty, or over {MAX_ENTITY_KEY_LENGTH} chars)")
    return cleaned


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b.c": "value"}; lists stay one JSON-encoded param so their order is kept."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple, Mapping)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def environment_params() -> dict[str, str]:
    """What decides whether two runs are comparable beyond their config: package versions, code version, host."""
    params = {"version.python": platform.python_version(), "hostname": socket.gethostname()}
    for package in VERSIONED_PACKAGES:
        try:
            params[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    params.update(_git_state())
    return params


def _git_state() -> dict[str, str]:
    """Commit and dirtiness of the checkout holding this package; empty outside a git repo or without git."""
    repo = Path(__file__).resolve().parent
    # Optional locks off: a read-only status must not race the user's own git commands for index.lock.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": str(bool(status)).lower()}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _clip(text: str, limit: int, what: str) -> str:
    """MLflow refuses over-long values; keep the head and say so (the full value is in the logged artifacts)."""
    if len(text) <= limit:
        return text
    log.warning("%s is %d characters, over MLflow's %d: truncated", what, len(text), limit)
    return text[:limit]


def _dist_state() -> tuple[int, int]:
    """(rank, world size); refuses to run un-initialised inside a multi-process launch, which would make N runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "Tracker.start: WORLD_SIZE > 1 but torch.distributed is not initialised; start the tracker after "
            "init_process_group, or every rank would create its own MLflow run"
        )
    return 0, 1


class Tracker:
    """One MLflow run shared by all ranks; only rank 0 logs training data (other ranks' calls are no-ops)."""

    def __init__(self, run_id: str | None, client: MlflowClient | None, *, async_logging: bool = False,
                 system_monitor: Any | None = None) -> None:
        self.run_id = run_id
        self._client = client  # None where this process must not log (rank > 0, or tracking disabled)
        self._async = async_logging
        self._pending: deque[RunOperations] = deque()
        self._system_monitor = system_monitor
        self._ended = False

    @classmethod
    def start(cls, cfg: TrackingSettings, *, params: dict, tags: dict[str, str], parent_run_id: str | None = None,
              artifacts: dict[str, dict | str | None] | None = None, resume_run_id: str | None = None) -> Tracker:
        """Create (rank 0) or join (other ranks) the job's run. Collective when torch.distributed is initialised.

        `params` is the run config (nested; flattened here) plus whatever the trainer adds; `tags` are merged over
        `cfg.tags`; `parent_run_id` links a stage-2 run to its stage-1 run; `artifacts` maps an artifact file name
        to a dict (written as YAML for .yaml/.yml names, else JSON) or to a local file copied under that name; a
        None value (e.g. no filter report for this data) is skipped. A missing file fails before any run exists.
        `resume_run_id` (a run resumed from a checkpoint) reopens that run instead: status RUNNING again, its params
        and artifacts kept as they are, `mimo.resumable` cleared, `mimo.resumes` counted up.
        If rank 0 fails, every rank raises, instead of the others waiting forever in the broadcast.
        """
        if not cfg.enabled:
            return cls(None, None)
        if _MLFLOW_MISSING is not None:
            raise ImportError(f"tracking is enabled but MLflow cannot be imported ({_MLFLOW_MISSING}): install "
                              "mlflow, or set tracking.enabled=false") from _MLFLOW_MISSING
        rank, world = _dist_state()
        created: dict[str, str] = {}
        error: str | None = None
        if rank == 0:
            try:
                if resume_run_id is not None:
                    created = _reopen_run(cfg, resume_run_id)
                else:
                    created = _create_run(cfg, params=params, tags=tags, parent_run_id=parent_run_id,
                                          artifacts=artifacts or {})
            except Exception as exc:  # re-raised below, after telling the other ranks
                error = f"{type(exc).__name__}: {exc}"
                if world == 1:
                    raise
        if world > 1:
            created, error = _broadcast((created, error))
        if error is not None:
            raise RuntimeError(f"Tracker.start failed on rank 0: {error}")
        run_id, uri = created["run_id"], created["tracking_uri"]
        monitor = _start_system_monitor(run_id, uri, rank, world) if cfg.system_metrics else None
        client = MlflowClient(uri) if rank == 0 else None
        return cls(run_id, client, async_logging=cfg.async_logging, system_monitor=monitor)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics (rank 0; asynchronously when configured). Names are sanitised, e.g. '@' → '_at_'."""
        if self._client is None:
            return
        now = int(time.time() * 1000)
        entities: dict[str, Metric] = {}
        for name, value in metrics.items():
            key = sanitize_name(name)
            if key in entities:
                raise ValueError(f"metric names {name!r} and another both sanitise to {key!r}")
            entities[key] = Metric(key, float(value), now, int(step))
        for batch in _chunks(list(entities.values()), MAX_METRICS_PER_BATCH):
            ops = self._client.log_batch(self.run_id, metrics=batch, synchronous=not self._async)
            if ops is not None:
                self._pending.append(ops)
        while len(self._pending) > _MAX_PENDING_BATCHES:
            self._pending.popleft().wait()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local file, or a folder's contents, into the run's artifacts under `artifact_path` (rank 0)."""
        if self._client is None:
            return
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: dict, name: str) -> None:
        """Write `obj` as the artifact `name` (YAML for .yaml/.yml, else JSON) (rank 0)."""
        if self._client is not None:
            self._client.log_dict(self.run_id, obj, _dict_artifact_name(name))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set or overwrite run tags, e.g. the final status of an evaluation (rank 0)."""
        if self._client is not None:
            _set_tags(self._client, self.run_id, tags)

    def end(self, status: str = "FINISHED") -> None:
        """Flush pending asynchronous logging, stop system metrics and close the run with `status` (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if self._system_monitor is not None:
            self._system_monitor.finish()
        if self._client is None:
            return
        while self._pending:
            self._pending.popleft().wait()
        self._client.set_terminated(self.run_id, status)


def fail_if_running(run_id: str, tracking_uri: str) -> bool:
    """Mark a run FAILED when it is still RUNNING, i.e. its ranks died without closing it (a rank killed hard, the
    others killed while they waited for it); True when it did. A run closed as KILLED or FAILED is left as it is."""
    client = MlflowClient(tracking_uri)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_terminated(run_id, "FAILED")
    return True


def _broadcast(payload: Any) -> Any:
    import torch.distributed as dist

    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _hostname() -> str:
    return socket.gethostname()


def _start_system_monitor(run_id: str, uri: str, rank: int, world: int) -> Any | None:
    """Start system metrics on the lowest rank of each host (collective when world > 1), under that host's name.

    Host names are gathered rather than read from LOCAL_RANK so that any launcher (deepspeed, torchrun, srun)
    gets exactly one monitor per node.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    host = _hostname()
    node_id = None
    if world > 1:
        import torch.distributed as dist

        hosts: list[str | None] = [None] * world
        dist.all_gather_object(hosts, host)
        if hosts.index(host) != rank:
            return None
        node_id = sanitize_name(host.split(".")[0])
    monitor = SystemMetricsMonitor(run_id, node_id=node_id, tracking_uri=uri)
    monitor.start()
    return monitor


def _create_run(cfg: TrackingSettings, *, params: dict, tags: dict[str, str], parent_run_id: str | None,
                artifacts: dict[str, dict | str | None]) -> dict[str, str]:
    """Rank 0's half of `Tracker.start`; returns what the other ranks need to know."""
    artifacts = {name: src for name, src in artifacts.items() if src is not None}
    missing = [f"{name} → {src}" for name, src in artifacts.items() if not isinstance(src, Mapping)
               and not Path(src).is_file()]
    if missing:
        raise FileNotFoundError(f"artifact files not found: {', '.join(missing)}")
    uri = resolve_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, cfg.experiment, uri)

    flat = {sanitize_name(k): _clip(v, MAX_PARAM_VAL_LENGTH, f"param {k}")
            for k, v in {**environment_params(), **flatten_params(params)}.items()}
    all_tags = {**cfg.tags, **tags}
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
        all_tags[MLFLOW_PARENT_TAG] = parent_run_id
    if "git.commit" in flat:
        all_tags.setdefault(MLFLOW_GIT_COMMIT_TAG, flat["git.commit"])

    run = client.create_run(experiment_id, run_name=cfg.run_name)
    run_id = run.info.run_id
    try:
        _set_tags(client, run_id, all_tags)
        for batch in _chunks([Param(k, v) for k, v in flat.items()], MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=batch, synchronous=True)
        for name, src in artifacts.items():
            _log_named_artifact(client, run_id, name, src)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, "tracking_uri": uri}


def _reopen_run(cfg: TrackingSettings, run_id: str) -> dict[str, str]:
    """Rank 0's half of a resumed `Tracker.start`: the checkpoint's run must be in this store."""
    uri = resolve_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"the checkpoint continues MLflow run {run_id}, which is not in the store {uri} (set "
                         "tracking.tracking_uri or MLFLOW_TRACKING_URI to the store the run started in)") from exc
    resumes = int(run.data.tags.get(TAG_RESUMES, "0")) + 1
    client.update_run(run_id, status="RUNNING")
    _set_tags(client, run_id, {TAG_RESUMABLE: "false", TAG_RESUMES: str(resumes)})
    return {"run_id": run_id, "tracking_uri": uri}


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment; a concurrent job creating it first is fine (sweeps start many at once)."""
    if found := client.get_experiment_by_name(name):
        return found.experiment_id
    db = sqlite_path(uri)
    # Without this MLflow puts a SQLite store's artifacts under the *current directory's* ./mlruns; keep them beside
    # the database so the store is one movable folder and a run started elsewhere still finds its files.
    location = (db.parent / "mlartifacts").as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        if found := client.get_experiment_by_name(name):
            return found.experiment_id
        raise


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    entities = [RunTag(k, _clip(str(v), MAX_TAG_VAL_LENGTH, f"tag {k}")) for k, v in tags.items()]
    for batch in _chunks(entities, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=batch, synchronous=True)


def _dict_artifact_name(name: str) -> str:
    return name if Path(name).suffix in {".json", ".yaml", ".yml"} else f"{name}.json"


def _log_named_artifact(client: MlflowClient, run_id: str, name: str, src: Mapping | str | os.PathLike) -> None:
    """Log a dict as `name`, or copy a file so it appears under `name` (keeping its suffix when `name` has none)."""
    if isinstance(src, Mapping):
        client.log_dict(run_id, dict(src), _dict_artifact_name(name))
        return
    path = Path(src)
    target = Path(name if Path(name).suffix else f"{name}{path.suffix}")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / target.name
        shutil.copyfile(path, staged)
        client.log_artifact(run_id, str(staged), str(target.parent) if str(target.parent) != "." else None)
