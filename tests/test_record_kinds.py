"""One declaration per record kind: a kind declared outside the package (`triplets` in tests/drivers/
triplet_objective.py) is written and validated by the shard writer, planned and collated by the loader, cached by
the teacher cache and trained on by a run, with no file of the package touched."""

import json
from pathlib import Path

import pytest
import torch
from corpus import LANGS, sentences, translate
from drivers.triplet_objective import TRIPLETS, TripletMimo
from extension import cached_batch, train_with

from mimo_ds.data import records as R
from mimo_ds.data.shards import iter_shard, read_index, write_shards
from mimo_ds.data.teacher_cache import check_run_cache
from mimo_ds.record_kinds import ROWS, Languages, RecordKind, record_kind

DRIVER = Path(__file__).parent / "drivers" / "triplet_objective.py"
KIND = ["objective.kind=triplet_mimo", "objective.lam=0.3"]


def triplet(i: int, words: list[str], negative: list[str], langs=LANGS) -> dict:
    return {"id": f"tri-{i:05d}", "query": {l: translate(words[: max(2, len(words) // 2)], l) for l in langs},
            "positive": {l: translate(words, l) for l in langs}, "negative": {l: translate(negative, l) for l in langs}}


@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> Path:
    texts = sentences(41, seed=5)  # 40 triplets, the hard negative of row i the sentence of row i + 1
    folder = tmp_path_factory.mktemp("triplets") / "triplets"
    write_shards([triplet(i, texts[i], texts[i + 1]) for i in range(40)], folder, TRIPLETS, 13)
    return folder


def test_the_declaration_drives_validation(triplets):
    assert record_kind("triplets") is TRIPLETS and read_index(triplets).record_kind is TRIPLETS
    assert read_index(triplets).available_languages == tuple(sorted(LANGS))
    good = triplet(0, ["river", "house"], ["music", "green"])
    assert R.check_record(good, TRIPLETS, ("en", "de")) is None
    assert R.check_record(good, ROWS).reason == R.MISSING_FIELD  # a triplet is no row: it has no passage
    cases = [({k: v for k, v in good.items() if k != "negative"}, R.MISSING_FIELD),
             ({**good, "negative": {"en": "x", "de": "y"}}, R.MISMATCHED_ROW),
             ({**good, "negative": {**good["negative"], "fr": " "}}, R.EMPTY_TEXT),
             ({**good, "negative": "x"}, R.NOT_OBJECT)]
    for record, reason in cases:
        assert R.check_record(record, TRIPLETS).reason == reason, record
    with pytest.raises(ValueError, match="record 1 .*not a valid triplets record: missing_field"):
        write_shards([good, cases[0][0] | {"id": "tri-1"}], triplets.parent / "bad", TRIPLETS, 4)
    with pytest.raises(TypeError, match="declared twice"):
        RecordKind("triplets", ("query", "positive"), Languages.PARALLEL)


def test_loader_and_teacher_cache_read_it(triplets, tmp_path):
    cfg, teacher, batch = cached_batch(triplets, TripletMimo, KIND, tmp_path / "cache", 7, shuffle_buffer=0,
                                       shard_shuffle=False)
    assert check_run_cache(cfg)["roles"] == ["teacher_query", "teacher_positive"]
    plans = [TripletMimo.schedule(sorted(LANGS), 42)(int(i.split("-")[1])) for i in batch.ids]
    assert batch.languages == {role: [p[role] for p in plans] for role in ("query", "positive", "negative")}
    assert len({p["negative"] for p in plans}) > 1 and all(p["query"] != p["positive"] for p in plans)
    # The student's negative tokens are the scheduled language's negative text of each row, exactly.
    index = read_index(triplets)
    rows = {m.record["id"]: m.record for s in index.shards for m in iter_shard(index.path(s))}
    want = teacher.tokenizer([rows[i]["negative"][p["negative"]] for i, p in zip(batch.ids, plans)],
                             padding="longest", truncation=True, max_length=256, return_tensors="pt")
    assert torch.equal(batch.student["negative"]["input_ids"], want["input_ids"])
    assert {k: v.shape for k, v in batch.teacher_embeddings.items()} == {
        "teacher_query": (7, 48), "teacher_positive": (7, 48)}


@pytest.mark.slow
def test_trains_on_it(triplets, tmp_path):
    out = tmp_path / "out"
    history = train_with(DRIVER, [f"data.train={triplets}", "max_steps=2", "epochs=20", *KIND], out)
    losses = [h["loss/total"] for h in history if "loss/total" in h]
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert {"loss/infonce", "loss/distill"} <= set(history[0])
    assert json.loads((out / "mimo_ds_student.json").read_text())["objective"] == "triplet_mimo"
