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
    row = {"impl": "ours", "mode": "local", "M": 16384, "N": 16384, "d": 1024, "seconds": 0.002, "extra_bytes": 100,
           "tflops": 800.0, "matmul_tflops": 1000.0}
    eager = {**row, "impl": "eager", "seconds": 0.001, "extra_bytes": 1000}
    big = {**row, "M": 65536, "N": 65536, "tflops": 400.0}
    peer = {**big, "impl": "inf-cl", "seconds": 0.001}
    lines = tables.goals({"results": [row, eager, big, peer], "ceilings": {"matmul_8192_tflops": 900.0}})
    text = "\n".join(lines)
    assert "2.00 ms vs 1.00 ms | no |" in text  # slower than eager
    assert "= 10.0% | no |" in text  # 100 of 1000 bytes
    assert "0.5× (2.00 vs 1.00 ms) | no |" in text  # inf-cl faster here
    assert "40% (400 of 1000 TFLOP/s) | no |" in text
