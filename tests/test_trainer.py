"""End-to-end trainer runs on CPU ZeRO-3 (gloo): every objective at 1 and 2 ranks, cached = plain gradients,
the teacher stays frozen and unpartitioned, stage 2 starts exactly from stage 1's output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from corpus import make_benchmark, make_pairs, make_rows
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
PROBE = Path(__file__).parent / "drivers" / "stage_probe.py"
NO_DROPOUT = ["student.random_init.hidden_dropout_prob=0.0", "student.random_init.attention_probs_dropout_prob=0.0"]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).parent))
    return env


def _launch(nproc: int, target: list[str], launcher: str = "torchrun") -> subprocess.CompletedProcess:
    if nproc == 1:
        env = {**_env(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port())}
        cmd = [sys.executable, *target]
    elif launcher == "deepspeed":
        env, cmd = _env(), ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), *target]
        cmd[0] = str(Path(sys.executable).parent / "deepspeed")
    else:
        env = _env()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
               *target]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _train(nproc: int, recipe: str, overrides: list[str], launcher: str = "torchrun") -> list[dict]:
    args = ["mimo_ds/train.py", "--config", str(TINY / recipe)]
    for o in overrides:
        args += ["--set", o]
    _launch(nproc, args, launcher)
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"pairs": make_pairs(root / "pairs", n=96), "rows": make_rows(root / "rows", n=96)}


def _losses(history: list[dict]) -> list[float]:
    return [h["loss/total"] for h in history if "loss/total" in h]


RECIPES = ["stage1.yaml", "stage2_mimo.yaml", "baseline_infonce.yaml", "baseline_xlco.yaml", "baseline_lakda.yaml"]


# Every recipe at 2 ranks; the two stages of MIMO also as a plain single process (the baselines share their code path).
@pytest.mark.parametrize("recipe, nproc", [(r, 2) for r in RECIPES] + [("stage1.yaml", 1), ("stage2_mimo.yaml", 1)])
def test_loss_decreases(recipe, nproc, data, tmp_path):
    kind = "pairs" if recipe == "stage1.yaml" else "rows"
    launcher = "deepspeed" if (nproc == 2 and recipe == "stage2_mimo.yaml") else "torchrun"
    history = _train(nproc, recipe, [f"data.train={data[kind]}", f"output_dir={tmp_path / 'out'}", "max_steps=10",
                                     "epochs=50", "optim.lr=2e-3"], launcher)
    losses = _losses(history)
    assert len(losses) == 10
    assert all(0 < h["throughput/padding_efficiency"] <= 1 for h in history if "loss/total" in h)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize("nproc, ds_json, precision", [
    (2, "zero3.json", "bf16"),          # the cluster configuration: bf16 compute copies, fp32 masters
    (2, "zero2.json", "bf16"),
    (1, "zero3_offload.json", "fp32"),  # optimizer + parameters offloaded to CPU (DeepSpeedCPUAdam)
])
def test_deepspeed_configs_and_precisions(nproc, ds_json, precision, data, tmp_path):
    history = _train(nproc, "stage2_mimo.yaml", [
        f"data.train={data['rows']}", f"output_dir={tmp_path / 'out'}", f"deepspeed={ROOT / 'ds_configs' / ds_json}",
        f"precision={precision}", "max_steps=6", "epochs=50", "optim.lr=2e-3"])
    losses = _losses(history)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    projection = load_file(tmp_path / "out" / "projection.safetensors")
    assert projection["weight"].dtype == torch.float32  # exported from the fp32 masters, not the bf16 copies


def test_evaluation_during_training_under_zero3_two_ranks(data, tmp_path):
    """The eval hook runs the ZeRO-3 student in lockstep on both ranks (no hang) every N steps and at the end;
    gradient checkpointing on, so that switch is exercised with the cached passes too."""
    bench = make_benchmark(tmp_path / "bench")
    history = _train(2, "stage2_mimo.yaml", [
        f"data.train={data['rows']}", f"output_dir={tmp_path / 'out'}", "max_steps=4", "epochs=50",
        f"eval.benchmarks=[{bench}]", "eval.every_steps=2", "eval.batch_size=7", "student.gradient_checkpointing=true"])
    evals = [h for h in history if "toy/ndcg_at_20" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for h in evals:
        assert 0.0 < h["toy/ndcg_at_20"] <= 1.0 and "toy/alignment" in h and "toy/mrc_at_10" in h


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


# Resident (the default for these students) at 1 and 2 ranks; gathered per forward on the case that exercises most.
@pytest.mark.parametrize("nproc, negatives, resident", [(1, "local", True), (2, "local", True), (2, "global", True),
                                                       (2, "global", False)])
def test_cached_passes_equal_plain_computation(nproc, negatives, resident, data, tmp_path):
    """With dropout on, cached = chunks kept with grad (same masks via restored RNG); without dropout, both equal the
    whole batch in one pass. Gradients compared, not parameters (Adam's first step hides gradient-scale errors).
    Under ZeRO-3 with the student resident (gathered once per step) and gathered per forward alike."""
    common = [f"data.train={data['rows']}", f"output_dir={tmp_path / 'o'}", f"objective.negatives={negatives}",
              f"student.resident_params={str(resident).lower()}"]
    _launch(nproc, [str(PROBE), "grads", str(TINY / "stage2_mimo.yaml"), str(tmp_path / "drop.pt"), *common])
    _launch(nproc, [str(PROBE), "grads", str(TINY / "stage2_mimo.yaml"), str(tmp_path / "nodrop.pt"), *common,
                    *NO_DROPOUT])
    drop, nodrop = torch.load(tmp_path / "drop.pt"), torch.load(tmp_path / "nodrop.pt")
    scale = max(g.abs().max().item() for g in drop["cached"].values())
    assert scale > 1e-3
    assert _max_diff(drop["cached"], drop["chunked"]) < 1e-5 * max(1.0, scale)
    assert _max_diff(drop["cached"], drop["direct"]) > 1e-3  # dropout really is on: one pass draws other masks
    assert _max_diff(nodrop["cached"], nodrop["direct"]) < 1e-5 * max(1.0, scale)
    assert _max_diff(nodrop["chunked"], nodrop["direct"]) < 1e-5 * max(1.0, scale)


def test_teacher_frozen_unpartitioned_unchanged(data, tmp_path):
    _launch(2, [str(PROBE), "teacher", str(TINY / "stage2_mimo.yaml"), str(tmp_path / "t.json"),
                f"data.train={data['rows']}", f"output_dir={tmp_path / 'o'}", "max_steps=3", "epochs=10"])
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["student_zero_managed"] is True
    assert report["zero_managed"] == [] and report["empty"] == [] and report["requires_grad"] == []
    assert report["training_mode"] is False
    assert report["changed"] == []
    assert len(report["losses"]) == 3


def test_stage2_starts_from_stage1_output(data, tmp_path):
    """Weights and P carried over bit-for-bit, and stage 2's MLflow run links to stage 1's."""
    from mlflow import MlflowClient

    s1, uri = tmp_path / "s1", f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = ["tracking.enabled=true", f"tracking.tracking_uri={uri}"]
    _train(1, "stage1.yaml", [f"data.train={data['pairs']}", f"output_dir={s1}", "max_steps=3", "epochs=10",
                              *tracking])
    _launch(2, [str(PROBE), "init", str(TINY / "stage2_mimo.yaml"), str(tmp_path / "init.pt"),
                f"data.train={data['rows']}", f"output_dir={tmp_path / 's2'}", f"init_from={s1}",
                "student.random_init=null", *tracking])
    stage1_run = json.loads((s1 / "mimo_ds_student.json").read_text())["run_id"]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stage2 = [r for r in runs if r.info.run_id != stage1_run]
    assert stage1_run and len(stage2) == 1 and stage2[0].data.tags["mimo.parent_run"] == stage1_run
    state = torch.load(tmp_path / "init.pt")
    saved = load_file(s1 / "student" / "model.safetensors")
    projection = load_file(s1 / "projection.safetensors")
    assert set(saved) == {k.removeprefix("encoder.") for k in state if k.startswith("encoder.")}
    for name, value in saved.items():
        assert torch.equal(state[f"encoder.{name}"], value), name
    assert torch.equal(state["projection.weight"], projection["weight"])
    assert torch.equal(state["projection.bias"], projection["bias"])


def test_stage_output_loads_in_sentence_transformers(data, tmp_path):
    """The exported student is a complete sentence-transformers folder (pooling + normalize) that embeds like ours."""
    from sentence_transformers import SentenceTransformer

    from mimo_ds.eval.encoding import load_encoder

    out = tmp_path / "s1"
    _train(1, "stage1.yaml", [f"data.train={data['pairs']}", f"output_dir={out}", "max_steps=2", "epochs=10",
                              "student.pooling=cls"])
    texts = ["ein kleines Haus am Fluss", "green river music", "la maison verte"]
    st = SentenceTransformer(str(out / "student"), device="cpu").encode(texts, convert_to_tensor=True)
    ours = load_encoder(out / "student", device="cpu").encode(texts, "passage")
    torch.testing.assert_close(st.cpu(), ours, rtol=1e-4, atol=1e-5)
    assert json.loads((out / "student" / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True


def test_init_from_with_another_teacher_is_refused_clearly(data, tmp_path):
    s1 = tmp_path / "s1"
    _train(1, "stage1.yaml", [f"data.train={data['pairs']}", f"output_dir={s1}", "max_steps=1"])
    proc = subprocess.run(
        [sys.executable, "-m", "mimo_ds.train", "--config", str(TINY / "stage2_mimo.yaml"),
         "--set", f"data.train={data['rows']}", "--set", f"output_dir={tmp_path / 's2'}", "--set", f"init_from={s1}",
         "--set", "student.random_init=null", "--set", "teacher.random_init.hidden_size=40"],
        env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 2  # refused in preflight, before any process group
    assert f"the projection in {s1} maps 32 → 48 dims, this run needs 32 → 40" in proc.stderr
    assert "Traceback" not in proc.stderr
