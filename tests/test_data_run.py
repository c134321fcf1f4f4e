"""Data faults seen by a whole training run on 2 ranks: preflight refuses damaged shards, a few bad records are
skipped and reported (file, MLflow), a mostly bad corpus stops the run with one message and no hang."""

import json
import random
import sqlite3
from pathlib import Path

import pytest
from corpus import make_rows, record_checksums
from test_checkpoint import RECIPE, _launch, _wait

N, SHARD_SIZE, BAD = 64, 16, "shard-000002.tar"


def _corpus(folder: Path) -> Path:
    """Four shards of 16 rows; the third replaced by random bytes of its size, recorded in the index as written."""
    make_rows(folder, n=N, shard_size=SHARD_SIZE)
    path = folder / BAD
    path.write_bytes(random.Random(3).randbytes(path.stat().st_size))
    record_checksums(folder)
    return folder


def _args(out: Path, rows: Path, fraction: float) -> list[str]:
    overrides = [f"data.train={rows}", f"output_dir={out}", "max_steps=null", "epochs=1", "data.num_workers=2",
                 f"data.max_bad_fraction={fraction}", "tracking.enabled=true",
                 f"tracking.tracking_uri=sqlite:///{out.parent / 'runs.db'}"]
    return ["--config", str(RECIPE)] + [a for o in overrides for a in ("--set", o)]


def _metric(db: Path, key: str) -> float:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT value FROM latest_metrics WHERE key = ?", (key,)).fetchone()[0]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_bad_records_below_the_ceiling_are_skipped_and_reported(tmp_path):
    rows = _corpus(tmp_path / "rows")
    out = tmp_path / "run"
    results = _wait(_launch(_args(out, rows, fraction=0.5)))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    report = json.loads((out / "data_bad_records.json").read_text())
    assert report["by_shard"] == {BAD: {"truncated_shard": SHARD_SIZE}}  # every record of the shard, once
    assert report["bad_records"] == SHARD_SIZE and sum(report["by_rank"]) == SHARD_SIZE
    # the rank whose slot lost a shard borrowed the records after its range, so both ranks made the same batches
    assert report["read"]["borrowed"] > 0 and report["by_rank"].count(0) == 1
    assert report["read"]["good"] + report["read"]["borrowed"] == N - SHARD_SIZE
    assert _metric(tmp_path / "runs.db", "data/bad_truncated_shard") == SHARD_SIZE
    assert _metric(tmp_path / "runs.db", "data/bad_records") == SHARD_SIZE


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_mostly_bad_corpus_stops_every_rank_with_one_message(tmp_path):
    rows = _corpus(tmp_path / "rows")
    results = _wait(_launch(_args(tmp_path / "run", rows, fraction=0.05)), timeout=300)
    assert all(code == 1 for code, _ in results), [code for code, _ in results]
    told = [err for _, err in results if "exceed max_bad_fraction" in err]
    assert len(told) == 1, [err[-2000:] for _, err in results]  # one rank reports, the other exits quietly
    assert BAD in told[0] and "Traceback" not in told[0]


def test_preflight_refuses_a_shard_of_the_wrong_size(tmp_path):
    rows = make_rows(tmp_path / "rows", n=N, shard_size=SHARD_SIZE)
    path = rows / BAD
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    results = _wait(_launch(_args(tmp_path / "run", rows, fraction=0.5), world=1), timeout=120)
    code, err = results[0]
    assert code == 2, err[-2000:]
    assert f"({BAD}: " in err and "the index recorded" in err and "Traceback" not in err
