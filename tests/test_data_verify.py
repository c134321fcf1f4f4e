"""Shard checksums and `mimo-ds shards verify` / preflight `check_shards`: each fault named, old indexes accepted."""

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from corpus import make_pairs, record_checksums
from mimo_ds.cli import main
from mimo_ds.data.shards import read_index
from mimo_ds.data.verify import NO_CHECKSUM, check_shards, verify_folder

SHARDS = 7  # 7 × 9 + 4 records: odd sizes


def folder_with(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "s", n=67, shard_size=9)


def shard(folder: Path, i: int) -> Path:
    return folder / f"shard-{i:06d}.tar"


def test_index_records_each_shards_size_and_sha256(tmp_path):
    folder = folder_with(tmp_path)
    index = read_index(folder)
    assert len(index.shards) == 8 and [s.count for s in index.shards] == [9] * 7 + [4]
    for info in index.shards:
        data = shard(folder, index.shards.index(info)).read_bytes()
        assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    _, reports = verify_folder(folder, "records", workers=1)
    assert all(r.ok and not r.notes for r in reports)
    assert [(r.records, r.size) for r in reports] == [(s.count, s.size) for s in index.shards]


def damage(folder: Path, fault: str, i: int) -> None:
    path = shard(folder, i)
    data = path.read_bytes()
    if fault == "corrupt":
        path.write_bytes(random.Random(i).randbytes(len(data)))
    elif fault == "missing":
        path.unlink()
    elif fault == "hash":
        at = data.index(b'"en":"') + 6
        path.write_bytes(data[:at] + data[at:at + 1].swapcase() + data[at + 1:])
    elif fault == "truncated":
        path.write_bytes(data[: len(data) // 2])


# fault → (size mode, full mode, records mode): whether each mode finds it
FOUND_BY = {"corrupt": (False, True, True), "missing": (True, True, True), "hash": (False, True, True),
            "truncated": (True, True, True)}


@pytest.mark.parametrize("where", [0, 3, 7], ids=["first", "middle", "last"])
def test_each_fault_is_named_by_the_modes_that_can_see_it(tmp_path, where):
    folder = folder_with(tmp_path)
    faults = dict(zip(sorted(FOUND_BY), [where, (where + 1) % 8, (where + 2) % 8, (where + 5) % 8]))
    for fault, i in faults.items():
        damage(folder, fault, i)
    for m, mode in enumerate(("size", "full", "records")):
        _, reports = verify_folder(folder, mode, workers=2)
        bad = {r.name for r in reports if not r.ok}
        assert bad == {shard(folder, i).name for fault, i in faults.items() if FOUND_BY[fault][m]}, mode
    by_name = {r.name: r for r in verify_folder(folder, "records", workers=2)[1]}
    assert "is missing" in by_name[shard(folder, faults["missing"]).name].status
    assert "bytes, the index recorded" in by_name[shard(folder, faults["truncated"]).name].status
    corrupt = by_name[shard(folder, faults["corrupt"]).name]
    assert "sha256" in corrupt.status and "unreadable after 0 records" in corrupt.status
    indexed = read_index(folder, require_files=False).shards[faults["corrupt"]].count
    assert corrupt.bad == {"truncated_shard": indexed}
    hashed = by_name[shard(folder, faults["hash"]).name]
    assert hashed.problems == [hashed.problems[0]] and "differs from the index's" in hashed.status  # records fine


def test_bad_records_by_reason_in_records_mode(tmp_path):
    folder = folder_with(tmp_path)
    members = [("pair-00009", b"\xff not utf-8"), ("pair-00010", b'{"id": "pair-00010"'),
               ("pair-00011", json.dumps({"id": "pair-00011", "lang": "de", "text": ""}).encode()),
               ("pair-00012", json.dumps({"id": "other", "lang": "de", "text": "t", "en": "e"}).encode()),
               ("pair-00013", json.dumps({"id": "pair-00013", "lang": "xx", "text": "t", "en": "e"}).encode())]
    with tarfile.open(shard(folder, 1), "w", format=tarfile.PAX_FORMAT) as tar:
        for key, payload in members:
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    record_checksums(folder)  # written this way: only the records are wrong
    _, reports = verify_folder(folder, "records", workers=1)
    assert [r.name for r in reports if not r.ok] == [shard(folder, 1).name]
    assert reports[1].records == 5
    assert reports[1].bad == {"invalid_utf8": 1, "bad_json": 1, "missing_field": 1, "key_mismatch": 1,
                              "unknown_language": 1, "truncated_shard": 4}  # 9 indexed, 5 held


def test_preflight_check_names_each_bad_shard(tmp_path):
    folder = folder_with(tmp_path)
    damage(folder, "missing", 2)
    damage(folder, "truncated", 5)
    damage(folder, "hash", 6)
    with pytest.raises(ValueError) as size_error:
        check_shards(folder, "size")
    message = str(size_error.value)
    assert "2 of 8 shards are not as index.json recorded" in message and "\n" not in message
    assert "shard-000002.tar: " in message and "shard-000005.tar: " in message and "shard-000006" not in message
    with pytest.raises(ValueError, match=r"3 of 8 shards .*shard-000006\.tar: .*sha256"):
        check_shards(folder, "full")
    with pytest.raises(ValueError, match="must be 'size' or 'full'"):
        check_shards(folder, "records")


def test_an_index_without_checksums_is_accepted_and_said_so(tmp_path):
    folder = folder_with(tmp_path)
    index = json.loads((folder / "index.json").read_text())
    for entry in index["shards"]:
        del entry["size"], entry["sha256"]
    (folder / "index.json").write_text(json.dumps(index))
    for mode in ("size", "full"):
        assert all(r.ok and r.notes == [NO_CHECKSUM] for r in check_shards(folder, mode))
    damage(folder, "truncated", 4)  # no size to compare: only reading the records finds it
    check_shards(folder, "full")
    _, reports = verify_folder(folder, "records", workers=1)
    assert [r.name for r in reports if not r.ok] == [shard(folder, 4).name]
    assert reports[4].bad.get("truncated_shard", 0) >= 1 and reports[0].status == f"ok ({NO_CHECKSUM})"


def test_cli_exit_status_table_and_json(tmp_path, capsys):
    folder = folder_with(tmp_path)
    assert main(["shards", "verify", str(folder), "--workers", "2"]) == 0
    assert "8 of 8 shards ok" in capsys.readouterr().out
    damage(folder, "hash", 3)
    out_json = tmp_path / "report.json"
    assert main(["shards", "verify", str(folder), "--problems", "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "shard-000003.tar" in out and "shard-000002.tar" not in out and "7 of 8 shards ok" in out
    report = json.loads(out_json.read_text())
    assert (report["shards"], report["ok"], report["mode"]) == (8, 7, "records")
    assert report["bytes"] == sum(p.stat().st_size for p in folder.glob("*.tar"))
    assert [r["name"] for r in report["reports"] if not r["ok"]] == ["shard-000003.tar"]
    assert main(["shards", "verify", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such folder" in capsys.readouterr().err
