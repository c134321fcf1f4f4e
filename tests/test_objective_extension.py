"""One declaration per objective: an objective defined in one class outside the package (tests/drivers/
example_objective.py) is validated by the run config, scheduled and tokenised by the loader, cached by the teacher
cache and trained by the step, with no other file touched."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag
from corpus import make_rows
from drivers.example_objective import SymmetricMimo
from extension import RECIPE, cached_batch, train_with

from mimo_ds.batch import Embedded
from mimo_ds.compare import plots
from mimo_ds.compare.table import group_arms
from mimo_ds.config import ConfigError, load_config
from mimo_ds.data.teacher_cache import check_run_cache
from mimo_ds.objectives import build_objective, objective_class
from mimo_ds.tracking import TAG_OBJECTIVE, sweep_tags

DRIVER = Path(__file__).parent / "drivers" / "example_objective.py"
KIND = ["objective.kind=sym_mimo", "objective.lam=0.3"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return make_rows(tmp_path_factory.mktemp("rows") / "rows", n=48, shard_size=16)


def test_registered_and_validated_like_a_built_in(rows):
    assert objective_class("sym_mimo") is SymmetricMimo
    cfg = load_config(RECIPE, [f"data.train={rows}", *KIND])
    assert type(cfg.objective) is SymmetricMimo.Settings and cfg.objective.lam == 0.3
    with pytest.raises(ConfigError, match="objective.negatives"):  # a MIMO key this objective does not declare
        load_config(RECIPE, [f"data.train={rows}", *KIND, "objective.negatives=global"])


def test_loss_is_the_symmetric_formula():
    g = torch.Generator().manual_seed(7)
    q, p, pq, pp = (torch.randn(9, 5, generator=g) for _ in range(4))
    tq, tp = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    obj = build_objective(SymmetricMimo.Settings(kind="sym_mimo", lam=0.3, scale=7.0))
    out = obj({"query": Embedded(q, pq), "passage": Embedded(p, pp)}, {"teacher_query": tq, "teacher_passage": tp})
    n = torch.nn.functional.normalize
    logits = 7.0 * n(q) @ n(p).T
    nce = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(9))
                 + torch.nn.functional.cross_entropy(logits.T, torch.arange(9)))
    kd = 0.5 * ((1 - torch.cosine_similarity(pq, tq)).mean() + (1 - torch.cosine_similarity(pp, tp)).mean())
    torch.testing.assert_close(out.loss, 0.3 * nce + 0.7 * kd)


def test_loader_and_teacher_cache_read_its_declaration(rows, tmp_path):
    cfg, _, batch = cached_batch(rows, SymmetricMimo, KIND, tmp_path / "cache", 6)
    assert check_run_cache(cfg)["roles"] == ["teacher_query", "teacher_passage"]
    schedule = SymmetricMimo.schedule(["de", "en", "es", "fr"], 42)
    plans = [schedule(int(i.split("-")[1])) for i in batch.ids]  # write position == id number in these shards
    assert batch.languages == {role: [p[role] for p in plans] for role in ("query", "passage")}
    assert set(batch.student) == {"query", "passage"} and not batch.teacher
    assert {k: v.shape for k, v in batch.teacher_embeddings.items()} == {
        "teacher_query": (6, 48), "teacher_passage": (6, 48)}


def _run(name: str, tags: dict[str, str], ndcg: float) -> Run:
    info = RunInfo(run_id=name, experiment_id="0", user_id="", status="FINISHED", start_time=0, end_time=1,
                   lifecycle_stage="active", run_name=name)
    return Run(info, RunData(metrics=[Metric("mlir/ndcg_at_20", ndcg, 0, 0)],
                             tags=[RunTag(k, v) for k, v in tags.items()]))


def test_its_swept_setting_is_tagged_and_drawn_as_a_sweep():
    """λ, which the objective declares swept, reaches the run's tags and the compare report's sweep figure."""
    runs = []
    for i, lam in enumerate((0.7, 0.1, 0.4)):
        settings = SymmetricMimo.Settings(kind="sym_mimo", lam=lam)
        runs.append(_run(f"sym-{i}", {TAG_OBJECTIVE: "sym_mimo", **sweep_tags(settings.swept_values())}, 1 - lam))
    runs.append(_run("other", {TAG_OBJECTIVE: "infonce"}, 0.5))  # declares no sweep: in no sweep
    assert runs[0].data.tags["mimo.lambda"] == "0.7"
    arms = group_arms(runs)
    found = plots.sweeps(arms)
    assert list(found) == [("sym_mimo", "lambda")]
    assert [(value, arm.label) for value, arm in found[("sym_mimo", "lambda")]] == [
        (0.1, "sym-1"), (0.4, "sym-2"), (0.7, "sym-0")]
    assert plots.sweep_curves(arms).startswith(b"\x89PNG") and plots.sweep_curves(arms[2:]) is None


@pytest.mark.slow
def test_trains_end_to_end(rows, tmp_path):
    out = tmp_path / "out"
    history = train_with(DRIVER, [f"data.train={rows}", "max_steps=4", "epochs=20", "optim.lr=2e-3", *KIND], out)
    losses = [h["loss/total"] for h in history if "loss/total" in h]
    assert len(losses) == 4 and {"loss/infonce", "loss/distill"} <= set(history[0])
    assert json.loads((out / "mimo_ds_student.json").read_text())["objective"] == "sym_mimo"
