"""Long runs that survive: checkpoints, exact resume after kill -9 and after SIGTERM, refusals, export, guards.

The 2-rank runs are started the way srun starts them (one process per rank with RANK / WORLD_SIZE / MASTER_* set),
so each rank's exit status and signals are the test's own. Stage 2 MIMO on the tiny models with cached passes,
global negatives, dropout on and 2 loader workers: every source of state a resume must restore is in play.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from corpus import make_rows
from safetensors.torch import load_file, save_file

from mimo_ds.checkpoint import (
    FORMAT,
    META_NAME,
    complete_checkpoints,
    manifest,
    rank_file,
    resolve_resume,
)
from mimo_ds.signals import EXIT_PREEMPTED
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "stage2_mimo.yaml"
DRIVERS = Path(__file__).parent / "drivers"
STEPS, EVERY = 9, 3


def _args(out: Path, rows: Path, *extra: str) -> list[str]:
    overrides = [f"data.train={rows}", f"output_dir={out}", f"max_steps={STEPS}", "epochs=20",
                 f"checkpoint.every_steps={EVERY}", "checkpoint.keep=2", "data.audit=true", "data.num_workers=2",
                 "objective.negatives=global", "tracking.enabled=true",
                 f"tracking.tracking_uri=sqlite:///{out.parent / (out.name + '.db')}", "optim.lr=2e-3", *extra]
    return ["--config", str(RECIPE)] + [a for o in overrides for a in ("--set", o)]


def _launch(args: list[str], world: int = 2, script: list[str] | None = None) -> list[subprocess.Popen]:
    """One process per rank, each in its own session (so a kill reaches its loader workers too)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(Path(__file__).parent)}
        cmd = [sys.executable, *(script or ["-m", "mimo_ds.train"]), *args]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    return procs


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every rank's process group still running, so a failed test leaves no rank (or its workers) behind."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group has already exited
            pass


def _wait(procs: list[subprocess.Popen], timeout: float = 420) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, err))
    except BaseException:  # our own timeout, pytest-timeout's, or an interrupt
        _kill(procs)
        raise
    return results


def _run(args: list[str], world: int = 2, script: list[str] | None = None) -> list[tuple[int, str]]:
    return _wait(_launch(args, world, script))


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip().endswith("}") and "loss/total" in line]


def _wait_for_step(out: Path, step: int, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if (_logged_steps(out) or [0])[-1] >= step:
                return
            if any(p.poll() is not None for p in procs):
                raise AssertionError(f"a rank ended before step {step}: {[p.communicate(timeout=60) for p in procs]}")
            time.sleep(0.05)
        raise AssertionError(f"step {step} not reached in {timeout}s")
    except BaseException:
        _kill(procs)
        raise


def _weights(out: Path) -> dict[str, torch.Tensor]:
    encoder = {f"encoder.{k}": v for k, v in load_file(out / "student" / "model.safetensors").items()}
    return {**encoder, **{f"P.{k}": v for k, v in load_file(out / "projection.safetensors").items()}}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _audit(out: Path) -> dict[int, Counter]:
    """Epoch → how often each sample id was trained on, over both ranks' trails."""
    per_epoch: dict[int, Counter] = {}
    for rank in (0, 1):
        for line in (out / "audit" / f"rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            per_epoch.setdefault(entry["epoch"], Counter()).update(entry["ids"])
    return per_epoch


def _planned(rows: Path) -> dict[int, Counter]:
    """The loader's plan for the first epochs of these runs, computed without training: what each epoch must hold."""
    from transformers import AutoTokenizer

    from mimo_ds.config import load_config
    from mimo_ds.data.loader import LoaderSpec, build_train_loader
    from mimo_ds.models.loading import resolve_model_path

    cfg = load_config(RECIPE, [f"data.train={rows}", "data.num_workers=2"])
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.student.path))
    plan: dict[int, Counter] = {}
    for rank in (0, 1):
        loader = build_train_loader(LoaderSpec(
            shards=rows, objective="mimo", student_tokenizer=tok, teacher_tokenizer=tok, batch_size=12,
            seed=cfg.seed, rank=rank, world_size=2, num_workers=2, shuffle_buffer=0, teacher_max_length=32,
            student_max_length=32, teacher_query_prompt=cfg.teacher.query_prompt))
        step = 0
        while step < STEPS:
            for batch in loader:
                step += 1
                if step > STEPS:
                    break
                plan.setdefault(loader.epoch, Counter()).update(batch.ids)
    return plan


def _mlflow_runs(out: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out.parent / (out.name + '.db')}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return make_rows(tmp_path_factory.mktemp("rows") / "rows", n=96, shard_size=16)


@pytest.fixture(scope="module")
def reference(rows, tmp_path_factory) -> Path:
    """The same run, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "out"
    results = _run(_args(out, rows))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    return out


@pytest.mark.slow
def test_kill_9_both_ranks_then_resume_auto_equals_the_uninterrupted_run(rows, reference, tmp_path):
    seed = random.randrange(2**32)
    kill_at = random.Random(seed).randint(EVERY + 1, STEPS - 2)  # after the first checkpoint, before the end
    out = tmp_path / "out"
    procs = _launch(_args(out, rows))
    _wait_for_step(out, kill_at, procs)
    _kill(procs)
    for p in procs:
        p.wait()
    assert complete_checkpoints(out), f"no complete checkpoint (kill at step {kill_at}, seed {seed})"
    results = _run(_args(out, rows) + ["--resume", "auto"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]

    assert _max_diff(_weights(out), _weights(reference)) <= 1e-6, f"kill at step {kill_at}, seed {seed}"
    runs = _mlflow_runs(out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert json.loads((out / "mimo_ds_student.json").read_text())["run_id"] == runs[0].info.run_id
    assert _logged_steps(out) == list(range(1, STEPS + 1))  # the log continues after the checkpoint's step
    audit, plan = _audit(out), _planned(rows)
    assert audit == plan, f"kill at step {kill_at}, seed {seed}"
    assert all(count == 1 for epoch in audit.values() for count in epoch.values())


@pytest.mark.slow
def test_sigterm_checkpoints_at_its_step_exits_75_and_resumes(rows, reference, tmp_path):
    out = tmp_path / "out"
    procs = _launch(_args(out, rows))
    _wait_for_step(out, EVERY + 1, procs)
    for p in procs:
        os.kill(p.pid, signal.SIGTERM)
    results = _wait(procs)
    assert [code for code, _ in results] == [EXIT_PREEMPTED, EXIT_PREEMPTED], results[0][1][-3000:]
    stopped_at = _logged_steps(out)[-1]
    assert EVERY + 1 <= stopped_at < STEPS
    assert complete_checkpoints(out)[-1].name == f"step_{stopped_at}"  # written at the signal's step
    (run,) = _mlflow_runs(out)
    assert run.info.status == "KILLED" and run.data.tags["mimo.resumable"] == "true"

    results = _run(_args(out, rows) + ["--resume", "auto"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert _max_diff(_weights(out), _weights(reference)) <= 1e-6
    (run,) = _mlflow_runs(out)
    assert run.info.status == "FINISHED" and run.data.tags["mimo.resumes"] == "1"
    assert all(count == 1 for epoch in _audit(out).values() for count in epoch.values())


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused_before_start(rows, reference):
    ((code, err),) = _run(_args(reference, rows) + ["--resume", "auto"], world=1)
    assert code == 2 and "world_size: checkpoint 2, now 1" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_fresh_run_does_not_overwrite_an_earlier_one(rows, reference):
    ((code, err),) = _run(_args(reference, rows), world=1)
    assert code == 2 and "--overwrite" in err and "checkpoints" in err
    assert (reference / "checkpoints").is_dir()


def _fake_checkpoint(folder: Path, step: int, world: int, drop: str | None = None) -> None:
    folder.mkdir(parents=True)
    files = [rank_file(r) for r in range(world)] + ["zero_pp_rank_0_mp_rank_00_model_states.pt"]
    for name in files:
        torch.save({"state": torch.randn(3, 2)}, folder / name)
    (folder / META_NAME).write_text(json.dumps({"format": FORMAT, "step": step, "files": manifest(folder, files)}))
    if drop:
        (folder / drop).unlink()


def test_auto_never_takes_an_unfinished_checkpoint(tmp_path):
    root = tmp_path / "out" / "checkpoints"
    _fake_checkpoint(root / "step_4", 4, world=2)
    _fake_checkpoint(root / ".tmp-step_12", 12, world=2)              # still being written
    _fake_checkpoint(root / "step_8", 8, world=2, drop=rank_file(1))  # a rank's file is missing
    (root / "step_10").mkdir()                                         # no meta.json
    _fake_checkpoint(root / "step_9", 9, world=2)
    (root / "step_9" / META_NAME).write_text("{truncated")             # meta.json cut short
    skipped = []
    assert resolve_resume("auto", tmp_path / "out", lambda folder, why: skipped.append(folder.name)) == root / "step_4"
    assert skipped == ["step_10", "step_9", "step_8"]  # newest first, each named
    assert resolve_resume("never", tmp_path / "out") is None
    assert resolve_resume("auto", tmp_path / "elsewhere") is None
    with pytest.raises(FileNotFoundError, match=r"step_8 is incomplete: missing rank1\.pt"):
        resolve_resume(root / "step_8", tmp_path / "out")
    with pytest.raises(ValueError, match=r"\.tmp-step_12 is not a checkpoint folder"):
        resolve_resume(root / ".tmp-step_12", tmp_path / "out")
    with pytest.raises(ValueError, match=r"step_9/meta\.json is not valid JSON"):
        resolve_resume(root / "step_9", tmp_path / "out")


def test_a_format1_checkpoint_is_warned_about_once_under_the_launcher(rows, tmp_path, monkeypatch, capsys):
    """`mimo-ds train --nproc N` checks once and prints the warning for a checkpoint from before manifests there; the
    ranks it starts are marked so, and their rank 0 does not print it again. A rank 0 started otherwise does."""
    import mimo_ds.launch
    from mimo_ds.config import load_config
    from mimo_ds.run_dir import run_identity
    from mimo_ds.train import CHECKED_BY_LAUNCHER_ENV, check_resume

    out = tmp_path / "out"
    cfg = load_config(RECIPE, [f"data.train={rows}", f"output_dir={out}"])
    folder = out / "checkpoints" / "step_3"
    _fake_checkpoint(folder, 3, world=1)
    names = sorted(p.name for p in folder.glob("*.pt"))
    (folder / META_NAME).write_text(json.dumps({"format": 1, **run_identity(cfg, 1), "step": 3, "files": names}))

    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv(CHECKED_BY_LAUNCHER_ENV, raising=False)
    assert check_resume(cfg, "auto", False, 1) == folder
    assert capsys.readouterr().err.count("predates checkpoint manifests") == 1

    started = []
    monkeypatch.setattr(mimo_ds.launch.subprocess, "Popen", lambda cmd, **kw: started.append(kw["env"]))
    mimo_ds.launch._start(["--config", str(RECIPE)], 3, tmp_path / "run.json")
    assert [env[CHECKED_BY_LAUNCHER_ENV] for env in started] == ["1", "1", "1"]
    monkeypatch.setenv(CHECKED_BY_LAUNCHER_ENV, started[0][CHECKED_BY_LAUNCHER_ENV])
    assert check_resume(cfg, "auto", False, 1) == folder
    assert "predates checkpoint manifests" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_pickle_planted_in_zero_model_states_never_runs(rows, reference, tmp_path, capsys):
    """DeepSpeed unpickles its own files with weights_only=False (zero_to_fp32, load_checkpoint): export and resume
    must refuse a planted object by name before that, whatever the manifest says."""
    from mimo_ds.cli import main as cli
    from mimo_ds.train import main as train

    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    folder = out / "checkpoints" / f"step_{STEPS}"
    target = folder / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    marker = tmp_path / "payload-ran"
    state = torch.load(target, map_location="cpu", weights_only=False)  # our own file: trusted here
    torch.save({**state, "note": _Planted(marker)}, target)
    meta = json.loads((folder / META_NAME).read_text())
    meta["files"] = manifest(folder, sorted(meta["files"]))  # re-signed: only the contents give it away
    (folder / META_NAME).write_text(json.dumps(meta))

    assert cli(["export", "--checkpoint", str(folder), "--out", str(tmp_path / "exported")]) == 2
    assert f"checkpoint file {target} is refused" in capsys.readouterr().err
    for resume in (str(folder), "auto"):
        assert train(_args(out, rows) + ["--resume", resume]) == 2
        err = capsys.readouterr().err
        assert f"checkpoint file {target} is refused" in err and err.count("error:") == 1
    assert not marker.exists() and folder.is_dir()


@pytest.mark.slow
def test_export_of_a_zero3_checkpoint_gives_the_training_time_encoder(reference, tmp_path):
    """The checkpoint at the last step, consolidated by `mimo-ds export` from its ZeRO-3 partitions, embeds like the
    stage output the run wrote from its live fp32 masters, in sentence-transformers and in plain transformers."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from mimo_ds.cli import main as cli

    step = reference / "checkpoints" / f"step_{STEPS}"
    assert cli(["export", "--checkpoint", str(step), "--out", str(tmp_path / "st")]) == 0
    assert cli(["export", "--checkpoint", str(step), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    texts = ["Wie spät ist es?", "Où est la gare ?", "¿Dónde está la biblioteca?", "the river by the old mill",
             "Москва — столица России", "東京は日本の首都です", "القاهرة عاصمة مصر"]
    trained = SentenceTransformer(str(reference / "student"), device="cpu").encode(texts, convert_to_tensor=True)
    exported = SentenceTransformer(str(tmp_path / "st" / "student"), device="cpu").encode(texts,
                                                                                           convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(trained, exported).min() > 0.9999
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf" / "student")
    model = AutoModel.from_pretrained(tmp_path / "hf" / "student").eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    plain = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # the run's mean pooling
    assert torch.nn.functional.cosine_similarity(trained, plain).min() > 0.9999
    projection = load_file(reference / "projection.safetensors")
    for folder in ("st", "hf"):
        assert not (tmp_path / folder / "student" / "projection.safetensors").exists()  # beside, never inside
        assert _max_diff(load_file(tmp_path / folder / "projection.safetensors"), projection) <= 1e-7


@pytest.mark.slow
def test_a_nan_step_is_skipped_on_every_rank_and_counted(rows, tmp_path):
    out = tmp_path / "out"
    args = _args(out, rows, "objective.kind=nan_mimo", "objective.nan_steps=[3]", "objective.nan_rank=1",
                 "checkpoint.every_steps=null", "data.audit=false")
    results = _run(args, script=[str(DRIVERS / "nan_objective.py")])
    assert [code for code, _ in results] == [0, 0], results[1][1][-3000:]
    history: dict[int, dict] = {}  # the last step has a second line: the run's end-of-run metrics
    for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        history.setdefault(h["step"], {}).update(h)
    assert [history[s]["guard/skipped_steps"] for s in (2, 3, 4, STEPS)] == [0.0, 1.0, 1.0, 1.0]
    assert history[4]["lr"] == history[3]["lr"]  # the skipped step did not advance the schedule
    assert all(torch.isfinite(w).all() for w in _weights(out).values())


@pytest.mark.slow
def test_nan_every_step_aborts_with_one_message(rows, tmp_path):
    args = _args(tmp_path / "out", rows, "objective.kind=nan_mimo", "objective.nan_steps=[-1]",
                 "guard.max_consecutive_skips=3", "checkpoint.every_steps=null")
    (code0, err0), (code1, err1) = _run(args, script=[str(DRIVERS / "nan_objective.py")])
    assert (code0, code1) == (1, 1)
    assert "error: step 3: 3 consecutive steps skipped" in err0 and "infonce=nan" in err0
    assert "error:" not in err1 and "Traceback" not in err0 + err1


@pytest.mark.slow
def test_a_pickle_bearing_projection_is_refused_naming_the_file(reference, rows, tmp_path):
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    for name in ("student", "mimo_ds_student.json"):
        os.symlink(reference / name, stage1 / name)
    weights = load_file(reference / "projection.safetensors")
    torch.save({**weights, "note": _Payload()}, stage1 / "projection.pt")
    args = _args(tmp_path / "s2", rows, f"init_from={stage1}", "student.random_init=null")
    ((code, err),) = _run(args, world=1)
    assert code == 2 and f"{stage1 / 'projection.pt'} cannot be read as tensors only" in err
    save_file(weights, str(stage1 / "projection.safetensors"))  # the same values as safetensors are accepted
    (stage1 / "projection.pt").unlink()
    from mimo_ds.models.student import check_projection
    check_projection(stage1, 32, 48)


class _Payload:
    """Any pickled object: what weights_only=True must refuse to construct."""


class _Planted:
    """Unpickles into a call that creates `marker`: proof that a load ran code of the file's choosing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())
