"""The teacher cache in parts: 2 gloo ranks merge to the 1-rank cache byte for byte, a killed run resumes from its
finished parts without recomputing them, a part from other inputs is refused by name (exit 2), and length-grouped
forwards give the arrival-order embeddings."""

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import make_rows
from test_teacher_cache import teacher_config

from mimo_ds.cli import main as cli_main
from mimo_ds.config import load_config
from mimo_ds.data.cache_parts import PARTS_DIR, PartPlan, part_folder
from mimo_ds.data.shards import read_index
from mimo_ds.data.teacher_cache import (
    cache_identity, encode_grouped, merge_cache, read_cache_meta, write_cache, write_parts,
)
from mimo_ds.errors import InputError
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import objective_class

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "stage2_mimo.yaml"
MIMO = objective_class("mimo")


def digests(folder: Path) -> dict[str, str]:
    """name → sha256 of every file of a cache folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return make_rows(tmp_path_factory.mktemp("parts") / "rows", n=37, shard_size=8)  # shards cross part boundaries


@pytest.fixture(scope="module")
def recipe_teacher(rows) -> Teacher:
    """The tiny recipe's teacher, as `mimo-ds teacher-cache` loads it (seeded with the recipe's seed)."""
    cfg = load_config(RECIPE, [f"data.train={rows}"])
    torch.manual_seed(cfg.seed)
    return Teacher.load(cfg.teacher, "cpu")


class Counting:
    """A teacher that counts the rows it encodes and, with `fail_after`, dies after that many forwards (a kill)."""

    def __init__(self, teacher: Teacher, fail_after: int | None = None) -> None:
        self.teacher, self.fail_after, self.rows, self.calls = teacher, fail_after, 0, 0

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def encode_tokens(self, tokens):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.rows += tokens["input_ids"].shape[0]
        return self.teacher.encode_tokens(tokens)


def _cli(*args: str, nproc: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # same threads on every rank
    cmd = [sys.executable, "-m", "mimo_ds.cli", "teacher-cache", "--config", str(RECIPE), "--device", "cpu", *args]
    return subprocess.run([*cmd, "--nproc", str(nproc)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def one_thread():
    """Torch on one thread, like every rank `_cli` starts: a forward's rounding may depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_gloo_ranks_merge_to_the_one_rank_cache_byte_for_byte(recipe_teacher, rows, tmp_path, one_thread):
    one = write_cache(recipe_teacher, MIMO, rows, tmp_path / "one", window=5, part_size=10, progress=False).parent
    two = _cli("--set", f"data.train={rows}", "--window", "5", "--part-size", "10", "--out", str(tmp_path / "two"),
               nproc=2)  # 4 parts of 10 positions (the last of 7): parts 0-1 on rank 0, 2-3 on rank 1
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1" in two.stderr  # rank 1's progress bar: it encoded its parts
    assert digests(tmp_path / "two") == digests(one)
    assert sorted(digests(one)) == ["ids.npy", "meta.json", "teacher_passage.npy", "teacher_query.npy",
                                    "text_hash.npy"]  # the parts are gone after the merge
    assert read_cache_meta(one)["count"] == 37


def test_a_killed_run_resumes_from_its_finished_parts(recipe_teacher, rows, tmp_path, capsys):
    plan = PartPlan(read_index(rows).total, window=3, part_size=9)  # parts 0..4: 9, 9, 9, 9, 1 positions
    reference = write_cache(recipe_teacher, MIMO, rows, tmp_path / "ref", window=3, part_size=9, progress=False)
    out = tmp_path / "cache"
    write_parts(recipe_teacher, MIMO, rows, out, plan, rank=1, world=2, progress=False)  # rank 1 of 2: parts 2..4
    per_window = 2 * -(-3 // recipe_teacher.cfg.mini_batch)  # 2 roles, 3 records each
    killed = Counting(recipe_teacher, fail_after=3 * per_window + 1)  # rank 0: dies in its second part's 2nd window
    with pytest.raises(KeyboardInterrupt):
        write_parts(killed, MIMO, rows, out, plan, rank=0, world=2, progress=False)
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == [
        f".part-000001.tmp-{os.uname().nodename}-{os.getpid()}", "part-000000", "part-000002", "part-000003",
        "part-000004"]
    kept = {p: p.stat().st_mtime_ns for p in (out / PARTS_DIR).glob("part-*/*")}
    capsys.readouterr()

    resumed = Counting(recipe_teacher)  # one rank now: the part size, not the world size, decides the parts
    assert write_parts(resumed, MIMO, rows, out, plan, progress=False) == [1]
    assert "4 of its 5 part(s) finished earlier, skipped" in capsys.readouterr().out
    assert resumed.rows == 2 * 9  # part 1's 9 records, 2 roles: nothing of the finished parts again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not list((out / PARTS_DIR).glob(".*"))  # the killed writer's leftovers are gone
    identity = cache_identity(MIMO, read_index(rows), recipe_teacher.fingerprint(), torch.float32, plan.window)
    meta = merge_cache(out, plan, identity, read_index(rows))
    assert digests(meta.parent) == digests(reference.parent)


@pytest.fixture(scope="module")
def left_parts(recipe_teacher, rows, tmp_path_factory) -> Path:
    """A cache folder holding the parts of rank 0 of 2 (a job killed before rank 1 and the merge finished)."""
    out = tmp_path_factory.mktemp("left") / "cache"
    write_parts(recipe_teacher, MIMO, rows, out, PartPlan(37, window=5, part_size=10), rank=0, world=2,
                progress=False)
    return out


@pytest.mark.parametrize("args, named", [
    (["--set", "teacher.max_length=16"], "fingerprint.max_length: part 32, this run 16"),
    (["--set", "teacher.query_prompt=ask"], "fingerprint.query_prompt: part 'query: ', this run 'ask'"),
    (["--window", "2"], "window: part 5, this run 2"),
    (["--part-size", "20"], "part-000000 was written from other inputs than this run's (stop: part 10, this run 20)"),
])
def test_a_part_from_other_inputs_is_refused_by_name(left_parts, rows, args, named, capsys):
    before = digests(part_folder(left_parts, 0))
    argv = ["teacher-cache", "--config", str(RECIPE), "--set", f"data.train={rows}", "--out", str(left_parts),
            "--device", "cpu", "--window", "5", "--part-size", "10", *args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: teacher-cache part ") and named in err, err
    assert "remove " in err and digests(part_folder(left_parts, 0)) == before
    assert not (left_parts / "meta.json").exists()


def test_parts_of_other_shards_are_refused(left_parts, tmp_path, capsys):
    other = make_rows(tmp_path / "other", n=37, shard_size=9)  # same count, other shard names and sizes
    argv = ["teacher-cache", "--config", str(RECIPE), "--set", f"data.train={other}", "--out", str(left_parts),
            "--device", "cpu", "--window", "5", "--part-size", "10"]
    assert cli_main(argv) == 2
    assert "shards: part " in capsys.readouterr().err


def test_the_cli_finishes_what_a_killed_job_left(left_parts, rows, tmp_path, capsys):
    left_parts = Path(shutil.copytree(left_parts, tmp_path / "cache"))
    argv = ["teacher-cache", "--config", str(RECIPE), "--set", f"data.train={rows}", "--out", str(left_parts),
            "--device", "cpu", "--window", "5", "--part-size", "10"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of its 4 part(s) finished earlier, skipped" in out and "padding efficiency" in out
    assert read_cache_meta(left_parts)["count"] == 37 and not (left_parts / PARTS_DIR).exists()


@pytest.mark.parametrize("n, mini_batch", [(23, 5), (17, 4)])
def test_length_grouped_forwards_give_the_arrival_order_embeddings(n, mini_batch):
    torch.manual_seed(0)
    teacher = Teacher.load(teacher_config(mini_batch=mini_batch))
    rng = random.Random(n)
    words = ["river", "house", "green", "music", "window", "market", "winter", "engine", "garden", "letter"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)]
    got, real, computed = encode_grouped(teacher, texts)
    arrival = torch.cat([teacher.encode(texts[i : i + mini_batch]) for i in range(0, n, mini_batch)])
    torch.testing.assert_close(got, arrival, atol=1e-6, rtol=0)
    lengths = [len(teacher.tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in texts]
    arrival_computed = sum(len(c) * max(c) for c in (lengths[i : i + mini_batch] for i in range(0, n, mini_batch)))
    assert real == sum(lengths) and real <= computed < arrival_computed


def test_unusable_records_are_counted_once_whatever_the_parts(recipe_teacher, tmp_path):
    """6 bad records in shard 1 and a shard 3 torn after 3 of its 8 (the tar ends there without an error): parts of 3
    positions (cutting shards) count exactly what one part over everything counts, and write the same bytes."""
    from test_data_loader import _truncated_loss, damage
    from test_data_loader import rows as loader_rows

    from mimo_ds.data.shards import write_shards

    shards = tmp_path / "shards"
    write_shards(loader_rows(40), shards, "rows", 8)
    damage(shards)
    caches = {size: write_cache(recipe_teacher, MIMO, shards, tmp_path / str(size), window=3, part_size=size,
                                progress=False).parent for size in (3, 42)}
    lost = _truncated_loss(shards)
    skipped = read_cache_meta(caches[3])["skipped"]
    assert skipped == read_cache_meta(caches[42])["skipped"]
    assert skipped["truncated_shard"] == lost and sum(skipped.values()) == 6 + lost
    assert sum(map(bool, np.load(caches[3] / "ids.npy").tolist())) == 40 - 6 - lost  # every other row was cached
    assert digests(caches[3]) == digests(caches[42])


def test_the_merge_refuses_a_damaged_part_by_name(recipe_teacher, rows, tmp_path, capsys):
    """A finished part whose array lost its tail, or whose file is replaced by one of another shape (same size), is
    named by the merge; the cache gets no meta.json."""
    plan = PartPlan(37, window=5, part_size=10)
    write_parts(recipe_teacher, MIMO, rows, tmp_path, plan, progress=False)
    identity = cache_identity(MIMO, read_index(rows), recipe_teacher.fingerprint(), torch.float32, plan.window)
    hashes = part_folder(tmp_path, 2) / "text_hash.npy"
    original = hashes.read_bytes()
    hashes.write_bytes(original[:-8])
    with pytest.raises(InputError, match=r"part-000002: text_hash.npy has \d+ bytes, its manifest recorded \d+"):
        merge_cache(tmp_path, plan, identity, read_index(rows))
    np.save(hashes, np.zeros(10, dtype=np.int64))  # same size, another dtype
    with pytest.raises(InputError, match=r"part-000002: text_hash.npy has shape \(10,\) and dtype int64, expected"):
        merge_cache(tmp_path, plan, identity, read_index(rows))
    assert not (tmp_path / "meta.json").exists()
