"""backend="auto": which path it picks for which size and budget (against a hand-made crossover table), and that
whatever it picks computes the plain float64 formula's loss and gradients at odd sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_kernel_infonce import CUDA, DTYPES, VARIANTS, _compare

from mimo_ds.kernels import auto, infonce_loss
from mimo_ds.kernels import infonce as infonce_module

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
TABLE = auto.parse_table({"devices": {"test-gpu": {
    "bytes_per_score": {"eager": 12, "compile": 4},
    "points": [
        {"M": 2048, "N": 2048, "d": 1024, "eager_ms": 1.0, "compile_ms": 2.0, "fused_ms": 3.0},
        {"M": 16384, "N": 16384, "d": 1024, "eager_ms": 6.0, "compile_ms": 3.0, "fused_ms": 5.0},
        {"M": 65536, "N": 65536, "d": 1024, "compile_ms": 50.0, "fused_ms": 80.0},  # eager out of memory there
        {"M": 16384, "N": 16384, "d": 384, "eager_ms": 2.0, "compile_ms": 4.0, "fused_ms": 5.0},
    ]}}})["test-gpu"]
HUGE = float(2**50)


@pytest.mark.parametrize("m, n, d, budget, want", [
    (2000, 2100, 1000, HUGE, "eager"),                  # nearest point 2048², eager fastest
    (15000, 17000, 1024, HUGE, "compile"),              # nearest 16k², compile fastest
    (16384, 16384, 1024, 5 * 16384**2, "compile"),      # eager (12 B/score) does not fit, compile (4) does
    (16384, 16384, 1024, 3 * 16384**2, "fused"),        # neither fits: the fallback
    (2048, 2048, 1024, 5 * 2048**2, "compile"),         # eager would win but does not fit
    (65536, 65536, 1024, HUGE, "compile"),              # eager not measured there: not a candidate
    (262144, 262144, 1024, HUGE, "compile"),            # beyond the table: the largest point decides
    (262144, 262144, 1024, 64 * 1024 * MIB, "fused"),   # ... within its budget
    (15000, 15000, 400, HUGE, "eager"),                 # nearest d is 384: eager wins there
    (64, 64, 1024, HUGE, "eager"),                      # below the table: the smallest point decides
])
def test_auto_picks_the_fastest_path_that_fits(m, n, d, budget, want):
    path, why = auto.choose(m, n, d, budget=budget, table=TABLE)
    assert path == want, why


def test_auto_counts_the_symmetric_direction_and_can_refuse_compile():
    m = 16384
    assert auto.choose(m, m, 1024, budget=5 * m * m, table=TABLE)[0] == "compile"
    assert auto.choose(m, m, 1024, budget=5 * m * m, table=TABLE, symmetric=True)[0] == "fused"  # 2·M² scores
    assert auto.choose(m, m, 1024, budget=HUGE, table=TABLE, compile_ok=False)[0] == "fused"  # 5 ms < eager's 6


def test_auto_without_a_table_is_conservative():
    assert auto.choose(2048, 16384, 1024, budget=HUGE, table=None)[0] == "eager"
    assert auto.choose(2048, 16385, 1024, budget=HUGE, table=None)[0] == "fused"
    assert auto.choose(2048, 2048, 1024, budget=12 * 2048 * 2048 - 1, table=None)[0] == "fused"
    assert auto.choose(64, 64, 32, budget=HUGE, table=None, eager_max_scores=0)[0] == "fused"  # the CPU


def test_a_malformed_table_entry_is_named():
    with pytest.raises(ValueError, match="'bad'"):
        auto.parse_table({"devices": {"bad": {"points": [{"M": 1, "N": 2}]}}})


def test_committed_crossovers_are_what_the_results_give():
    """kernels/crossovers.json is generated from the committed benchmark results, never edited by hand."""
    tables = auto.load_table()
    assert tables, "kernels/crossovers.json is empty"
    for name, table in tables.items():
        folder = ROOT / "benchmarks" / "results" / name.lower().replace(" ", "-")
        done = subprocess.run([sys.executable, "benchmarks/crossovers.py", str(folder / "infonce.json"), "--check"],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert table.points and set(table.bytes_per_score) == {"eager", "compile"}


@pytest.fixture
def forced(monkeypatch):
    """Run infonce_loss(backend="auto") with TABLE as this device's table, and record the path each call took."""
    taken = []
    monkeypatch.setattr(auto, "device_table", lambda device: TABLE)
    choose = auto.choose

    def spy(*args, **kwargs):
        taken.append(choose(*args, **kwargs)[0])
        return taken[-1], "test"

    monkeypatch.setattr(auto, "choose", spy)
    return taken


@pytest.mark.parametrize("budget, path", [(HUGE, "eager"), (0.0, "fused")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_matches_formula_whatever_it_picks(forced, variant, dtype, budget, path):
    _compare(lambda q, k, **kw: infonce_loss(q, k, backend="auto", memory_budget=budget, **kw), variant, dtype)
    assert set(forced) == {path}


def test_eager_backend_runs_the_materialised_formula(monkeypatch):
    calls = []
    original = auto.materialised
    monkeypatch.setattr(auto, "materialised", lambda *a: calls.append(1) or original(*a))
    q, k = torch.randn(5, 8), torch.randn(7, 8)
    infonce_loss(q, k, backend="eager")
    assert calls == [1]
    assert infonce_module.auto_choice(q, k)[0] == "fused"  # the CPU without a table: the chunked path


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["eager", "compile", "auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["plain", "all_none_reduction", "margin"])
def test_materialised_and_auto_gpu_match_formula(variant, dtype, backend):
    if "margin" in VARIANTS[variant] and dtype != torch.float32 and backend != "auto":
        pytest.skip("16-bit scores decide the margin mask on the materialised path (kernels/auto.py `_direction`); "
                    "auto takes the fused path there")
    _compare(lambda q, k, **kw: infonce_loss(q, k, backend=backend, **kw), variant, dtype, device="cuda",
             shape=(300, 517, 1000))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_this_gpu_reads_its_crossovers_or_the_default():
    name = torch.cuda.get_device_name(0)
    table = auto.device_table(torch.device("cuda"))
    assert (table is not None) == (name in json.loads(auto.TABLE.read_text())["devices"])
