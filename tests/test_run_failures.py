"""Failures of a run that must end in one clean message with the right status, and must neither delete nor execute
what they should not (issue 20): recipe-relative output_dir, the stage-2 projection refusal, checkpoint manifests
and fallbacks, files refused rather than unpickled, --overwrite that can be undone, disk space, the --nproc wrapper.

Everything here but the last test runs in this process or one short single-rank process; the real DeepSpeed
checkpoints (a planted pickle in ZeRO's model states) are tested in test_checkpoint.py on its reference run.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from corpus import make_rows

from mimo_ds.checkpoint import (
    FORMAT,
    META_NAME,
    CheckpointManager,
    OutOfSpace,
    UnsafeCheckpoint,
    checkpoint_bytes,
    complete_checkpoints,
    manifest,
    rank_file,
    resolve_resume,
)
from mimo_ds.config import ConfigError, load_config
from mimo_ds.errors import RunError
from mimo_ds.launch import combined_status
from mimo_ds.run_dir import SetAside, replaced_folders, run_identity
from mimo_ds.signals import EXIT_PREEMPTED, StopRequests
from mimo_ds.train import check_resume, lost_a_peer, main, preflight

ROOT = Path(__file__).resolve().parents[1]
TINY2 = ROOT / "recipes" / "tiny" / "stage2_mimo.yaml"
ENGINE_FILE = "zero_pp_rank_0_mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return make_rows(tmp_path_factory.mktemp("rows") / "rows", n=48, shard_size=16)


def _args(rows: Path, out: Path, *sets: str) -> list[str]:
    overrides = [f"data.train={rows}", f"output_dir={out}", *sets]
    return ["--config", str(TINY2)] + [a for o in overrides for a in ("--set", o)]


def _checkpoint(out: Path, step: int, identity: dict | None = None, world: int = 1) -> Path:
    """A checkpoint as CheckpointManager lays it out (torch files, manifest written last), without DeepSpeed."""
    folder = out / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    for rank in range(world):
        torch.save({"rng": {"torch": torch.get_rng_state()}, "loader": {"epoch": 0}}, folder / rank_file(rank))
    torch.save({"module": {"w": torch.randn(7, 5)}, "ds_version": "0.19"}, folder / ENGINE_FILE)
    names = sorted(p.name for p in folder.iterdir())
    meta = {"format": FORMAT, **(identity or {}), "step": step, "files": manifest(folder, names)}
    (folder / META_NAME).write_text(json.dumps(meta))
    return folder


class _Payload:
    """Pickles to a call that creates `marker`: what unpickling a planted checkpoint file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


# -- 1. output_dir is relative to the recipe, like init_from ------------------------------------------------------------
@pytest.mark.parametrize("folder", ["recipes", "recipes/tiny", "recipes/demo"])
def test_stage2_reads_where_stage1_writes_from_any_working_directory(folder, tmp_path, monkeypatch):
    recipes = sorted((ROOT / folder).glob("*.yaml"))
    for cwd in (ROOT, tmp_path, ROOT / "recipes"):
        monkeypatch.chdir(cwd)
        cfgs = {path.stem: load_config(path) for path in recipes}
        for name, cfg in cfgs.items():
            assert cfg.output_dir.is_absolute() and cfg.output_dir.is_relative_to(ROOT / "runs"), (cwd, name)
        stage2 = cfgs["stage2_mimo"]
        if stage2.init_from is not None:  # the paper's and the demo's recipes chain; the tiny stage 2 starts fresh
            assert stage2.init_from == cfgs["stage1"].output_dir, cwd


# -- 4. a stage-2 init_from without P -----------------------------------------------------------------------------------
def test_init_from_without_a_projection_is_refused_unless_asked_for(rows, tmp_path, capsys):
    stage1 = tmp_path / "stage1"  # a stage output of a teacher-free objective: student, no projection.safetensors
    stage1.mkdir()
    (stage1 / "mimo_ds_student.json").write_text(json.dumps({"hidden_size": 32, "pooling": "mean"}))
    sets = [f"init_from={stage1}", "student.random_init=null"]
    assert main(_args(rows, tmp_path / "out", *sets)) == 2
    err = capsys.readouterr().err
    assert f"init_from {stage1} has no projection.safetensors" in err and "projection.fresh=true" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    cfg = load_config(TINY2, [f"data.train={rows}", f"output_dir={tmp_path / 'out'}", *sets, "projection.fresh=true"])
    assert preflight(cfg) is None  # asked for: accepted, a fresh run


# -- 8. preflight refusals ---------------------------------------------------------------------------------------------
def test_an_output_dir_that_is_a_file_is_refused_before_start(rows, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert main(_args(rows, tmp_path / "out")) == 2
    assert f"output_dir {tmp_path / 'out'} is a file" in capsys.readouterr().err
    assert main(_args(rows, tmp_path / "out" / "run")) == 2
    assert "which is a file" in capsys.readouterr().err


def test_resume_auto_on_a_finished_run_does_not_advise_resume_auto(rows, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mimo_ds_student.json", "metrics.jsonl"):
        (out / name).write_text("{}\n")
    assert main(_args(rows, out) + ["--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "finished" in err and "--overwrite" in err and "--resume auto" not in err


# -- 6. manifests: the newest usable checkpoint, the broken ones named and pruned ----------------------------------------
def test_resume_auto_falls_back_past_truncated_and_incomplete_checkpoints(rows, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = load_config(TINY2, [f"data.train={rows}", f"output_dir={out}"])
    identity = run_identity(cfg, 1)
    good = _checkpoint(out, 3, identity)
    truncated = _checkpoint(out, 9, identity)
    engine = truncated / ENGINE_FILE
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])  # a write cut short
    incomplete = _checkpoint(out, 6, identity)
    (incomplete / rank_file(0)).unlink()
    altered = _checkpoint(out, 7, identity)
    meta = json.loads((altered / META_NAME).read_text())
    (altered / rank_file(0)).write_bytes(b"\0" * meta["files"][rank_file(0)]["size"])  # same size, other bytes

    assert check_resume(cfg, "auto", False, 1) == good
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3, lines  # one line per skipped checkpoint, newest first
    assert f"{engine} is" in lines[0] and "its manifest says" in lines[0]
    assert str(altered / rank_file(0)) in lines[1] and "checksum" in lines[1]
    assert "step_6 is incomplete: missing rank0.pt" in lines[2]
    assert [f.name for f in (out / "checkpoints").iterdir()] == ["step_3"]  # broken ones deleted, the good one kept

    broken = _checkpoint(out, 12, identity)
    (broken / ENGINE_FILE).write_bytes(b"")
    from mimo_ds.cli import main as cli

    assert cli(["export", "--checkpoint", str(broken), "--out", str(tmp_path / "x")]) == 2  # named, refused
    assert f"{broken / ENGINE_FILE} is 0 bytes" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=f"{broken / ENGINE_FILE} is 0 bytes"):
        check_resume(cfg, broken, False, 1)


def test_a_checkpoint_before_manifests_is_accepted_with_a_warning(rows, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = load_config(TINY2, [f"data.train={rows}", f"output_dir={out}"])
    folder = _checkpoint(out, 3, run_identity(cfg, 1))
    meta = json.loads((folder / META_NAME).read_text())
    (folder / META_NAME).write_text(json.dumps({**meta, "format": 1, "files": sorted(meta["files"])}))
    assert check_resume(cfg, "auto", False, 1) == folder
    assert "predates checkpoint manifests" in capsys.readouterr().err


def test_a_checkpoint_of_another_run_is_refused_naming_every_difference(rows, tmp_path):
    """The identity a checkpoint records (`run_identity`) against this run's: each differing key named, a key the
    checkpoint lacks included; the same run resumes."""
    out = tmp_path / "out"
    cfg = load_config(TINY2, [f"data.train={rows}", f"output_dir={out}"])
    saved = {**run_identity(cfg, 2), "seed": cfg.seed + 5}
    del saved["objective"]
    folder = _checkpoint(out, 3, saved)
    with pytest.raises(ConfigError) as caught:
        check_resume(cfg, "auto", False, 1)
    assert str(caught.value) == (f"cannot resume from {folder}: the run differs from the one that wrote it in "
                                 f"world_size: checkpoint 2, now 1; seed: checkpoint {cfg.seed + 5}, now {cfg.seed}; "
                                 f"objective: checkpoint None, now {cfg.objective.kind!r}")
    meta = json.loads((folder / META_NAME).read_text())
    (folder / META_NAME).write_text(json.dumps({**meta, **run_identity(cfg, 1)}))
    assert check_resume(cfg, "auto", False, 1) == folder


# -- 2. files are loaded as tensors only, before anything unpickles them -------------------------------------------------
def test_a_planted_pickle_is_refused_by_name_and_never_runs(tmp_path, capsys):
    out = tmp_path / "out"
    older = _checkpoint(out, 2)
    folder = _checkpoint(out, 4)
    marker = tmp_path / "payload-ran"
    torch.save({"module": {"w": torch.randn(7, 5)}, "note": _Payload(marker)}, folder / ENGINE_FILE)
    (folder / META_NAME).unlink()
    (folder / META_NAME).write_text(json.dumps({"format": FORMAT, "step": 4, "files": manifest(
        folder, sorted(p.name for p in folder.iterdir()))}))  # a manifest that matches: only the contents are wrong
    with pytest.raises(UnsafeCheckpoint, match=f"{folder / ENGINE_FILE} is refused"):
        resolve_resume(folder, out)
    with pytest.raises(UnsafeCheckpoint):  # auto does not pass over it to the older one: it refuses
        resolve_resume("auto", out)
    from mimo_ds.cli import main as cli

    assert cli(["export", "--checkpoint", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert f"{folder / ENGINE_FILE} is refused" in capsys.readouterr().err
    assert not marker.exists() and older.is_dir() and folder.is_dir()


# -- 3. --overwrite sets the earlier outputs aside and puts them back when the new run fails -------------------------------
def test_set_aside_outputs_are_restored_or_discarded(tmp_path):
    out = tmp_path / "out"
    _checkpoint(out, 3)
    (out / "metrics.jsonl").write_text('{"step": 3}\n')
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    aside = SetAside(out)
    aside.move()
    assert not (out / "checkpoints").exists() and len(replaced_folders(out)) == 1
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # the new run's, before it failed
    assert "are back in" in aside.restore()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "metrics.jsonl").read_text() == '{"step": 3}\n'
    aside.move()
    aside.discard()  # the new run wrote its first checkpoint
    assert not any(out.iterdir())


def test_overwrite_with_a_student_that_cannot_load_keeps_the_earlier_run(rows, tmp_path):
    out = tmp_path / "out"
    old = [_checkpoint(out, step) for step in (3, 6, 9)]
    (out / "metrics.jsonl").write_text('{"step": 9}\n')
    broken = tmp_path / "student"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")  # passes the preflight's presence check, fails to load
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, "-m", "mimo_ds.train", *_args(rows, out, f"student.path={broken}"),
                           "--overwrite"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("error:") == 1 and str(broken) in proc.stderr and "Traceback" not in proc.stderr
    assert "are back in" in proc.stderr
    assert complete_checkpoints(out) == old and (out / "metrics.jsonl").read_text() == '{"step": 9}\n'
    assert not replaced_folders(out)


# -- 7. disk space ---------------------------------------------------------------------------------------------------------
class _Engine:
    """What CheckpointManager.save asks of a DeepSpeed engine: a device and a save that writes `size` bytes."""

    device = torch.device("cpu")

    def __init__(self, size: int, fail: BaseException | None = None) -> None:
        self.size, self.fail = size, fail

    def save_checkpoint(self, root: str, tag: str, client_state: dict, save_latest: bool) -> None:
        if self.fail is not None:
            raise self.fail
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        (Path(root) / tag / ENGINE_FILE).write_bytes(os.urandom(self.size))


def _save(manager: CheckpointManager, engine: _Engine, step: int) -> Path:
    return manager.save(engine, step, loader_state={}, meta={"run_id": None}, run_config={},
                        write_spec=lambda folder: folder.mkdir())


def _on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _disk(root: Path, capacity: int):
    """A filesystem of `capacity` bytes holding exactly what is under `root`."""
    def usage(path):
        used = _on_disk(root)
        return shutil._ntuple_diskusage(capacity, used, capacity - used)
    return usage


def test_short_of_space_applies_keep_first_then_stops_naming_the_bytes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    size = 300_003
    manager = CheckpointManager(out, every_steps=1, keep=3, rank=0, world=1)
    for step in (1, 2, 3):
        _save(manager, _Engine(size), step)
    one = _on_disk(out / "checkpoints" / "step_3")
    monkeypatch.setattr("mimo_ds.checkpoint.shutil.disk_usage", _disk(out, capacity=int(3.6 * one)))
    _save(manager, _Engine(size), 4)  # 0.6 checkpoints free: down to keep - 1 = 2 first, then written
    assert [f.name for f in complete_checkpoints(out)] == ["step_2", "step_3", "step_4"]

    capacity = int(1.5 * one)
    monkeypatch.setattr("mimo_ds.checkpoint.shutil.disk_usage", _disk(out, capacity=capacity))
    with pytest.raises(OutOfSpace) as stop:  # keep=1: only the newest stays, and there is still no room
        _save(CheckpointManager(out, every_steps=1, keep=1, rank=0, world=1), _Engine(size), 5)
    assert [f.name for f in complete_checkpoints(out)] == ["step_4"] and stop.value.checkpoint.name == "step_4"
    message = str(stop.value)
    needed, free = checkpoint_bytes(out / "checkpoints" / "step_4"), capacity - _on_disk(out)
    assert str(out / "checkpoints") in message and f"needs {needed} bytes" in message and 0 < free < needed
    assert f"{free} are free" in message and "--resume auto" in message


@pytest.mark.parametrize("fail", [OSError(errno.ENOSPC, "No space left on device"),
                                  RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                                               "failed writing file data/0: file write failed")])
def test_a_full_disk_while_writing_is_called_so(fail, tmp_path, monkeypatch):
    out = tmp_path / "out"
    manager = CheckpointManager(out, every_steps=1, keep=3, rank=0, world=1)
    monkeypatch.setattr("mimo_ds.checkpoint.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(RunError, match=r"no space left on device writing checkpoint .*out/checkpoints/\.tmp-step_1"):
        _save(manager, _Engine(10, fail=fail), 1)


# -- 8. a second Ctrl-C ----------------------------------------------------------------------------------------------------
def test_a_second_ctrl_c_aborts_only_before_the_checkpoint(capsys):
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        stop.checkpointed = True
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the run is already leaving with 75
    assert "the checkpoint is written" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt, match="aborting without a checkpoint"), StopRequests():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


# -- 5. mimo-ds train --nproc ----------------------------------------------------------------------------------------------
def test_nproc_checks_once_and_never_starts_ranks_on_a_config_error(rows, tmp_path, capsys, monkeypatch):
    from mimo_ds.cli import main as cli

    def no_ranks(*args, **kwargs):
        raise AssertionError("a rank was started")

    monkeypatch.setattr(subprocess, "Popen", no_ranks)
    base = ["train", "--config", str(TINY2), "--set", f"data.train={rows}", "--set", f"output_dir={tmp_path}"]
    assert cli([*base, "--set", "batch.mini_batch=13", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "mini_batch" in err and "Traceback" not in err
    for bad in ("0", "-3"):
        assert cli([*base, "--nproc", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"--nproc must be a positive number of processes, got {bad}" in err


def test_the_launch_status_is_the_trainers():
    assert combined_status([75, 75]) == 75
    assert combined_status([0, 0]) == 0
    assert combined_status([75, 1]) == 1  # a failure wins: never requeue a job where a rank failed
    assert combined_status([0, 137, 1]) == 137  # in exit order: the rank killed first, not the ranks that lost it
    assert combined_status([2, 2]) == 2
    assert lost_a_peer(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:38068"))
    assert lost_a_peer(RuntimeError("[pair.cc:537] Read error [127.0.0.1]:21895: Connection reset by peer."))
    assert not lost_a_peer(RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"))


@pytest.mark.slow
def test_a_preemption_under_nproc_2_exits_75_with_the_run_killed(rows, tmp_path):
    from mlflow import MlflowClient

    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mimo_ds.cli", "train", "--nproc", "2", "--config", str(TINY2)]
    for s in (f"data.train={rows}", f"output_dir={out}", "max_steps=400", "epochs=200", "tracking.enabled=true",
              f"tracking.tracking_uri={db}"):
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "no step 2"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to the wrapper only: it forwards to both ranks
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err and "FAILED" not in err
    assert complete_checkpoints(out)
    client = MlflowClient(db)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED" and run.data.tags["mimo.resumable"] == "true"
    assert yaml.safe_load((complete_checkpoints(out)[-1] / "meta.json").read_text())["world_size"] == 2
