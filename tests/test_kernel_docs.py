"""docs/kernel.md's GPU tables are generated from the committed result files, never edited by hand."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _kernel_tables():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import kernel_tables
    finally:
        sys.path.remove(str(BENCHMARKS))
    return kernel_tables


def test_kernel_doc_tables_match_the_result_files():
    assert _kernel_tables().main(["--check"]) == 0, "run: python benchmarks/kernel_tables.py"


def test_goals_are_judged_from_the_numbers():
    """A hand-worked case: the goal rows must follow the measured values, not fixed text."""
    tables = _kernel_tables()
    base = {"mode": "local", "M": 65536, "N": 65536, "d": 1024, "matmul_tflops": 700.0}
    ours = {**base, "impl": "ours", "seconds": 0.012, "extra_bytes": 150, "tflops": 400.0}
    comp = {**base, "impl": "compile", "seconds": 0.010, "extra_bytes": 1000, "tflops": 500.0}
    eager = {**base, "impl": "eager", "seconds": 0.020, "extra_bytes": 3000, "tflops": 250.0}
    auto = {**base, "impl": "auto", "seconds": 0.0104, "extra_bytes": 1000, "tflops": 480.0, "auto_path": "compile"}
    big = {**base, "M": 262144, "N": 262144, "impl": "ours", "seconds": 1.0, "extra_bytes": 10, "tflops": 480.0}
    big_comp = {**big, "impl": "compile", "skipped": "out of memory"}
    del big_comp["seconds"]
    report = {"results": [ours, comp, eager, auto, big, big_comp], "ceilings": {"matmul_8192_tflops": 800.0}}
    text = "\n".join(tables.goals(report))
    assert "| 65536×65536, d = 1024 | 1.04× (10.40 ms, compile, vs compile 10.00 ms) | yes |" in text
    assert "| 65536×65536, d = 1024 | 1.20× (12.00 vs 10.00 ms) | no |" in text  # 1.2 > 1.1
    assert "| 65536×65536, d = 1024 | 15% (0 vs 0 MiB) | no |" in text  # 150 of 1000 bytes > 10%
    assert "compile: out of memory; only the fused path ran" in text
    assert "| 60% (480 of 800 TFLOP/s) | yes |" in text  # against the 8192³ peak, not the same-shape matmul
    without_auto = {**report, "results": [ours, comp, eager]}
    assert "not timed at HEAD" in "\n".join(tables.goals(without_auto))
