"""The lent-GPU run's machinery on the CPU: the plan fits the device's limits, a hanging command names its frame
before it is stopped, results carry the commit without git, test reports are read back, the summary counts files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def gpu_modules():
    sys.path[:0] = [str(GPU), str(ROOT / "benchmarks")]
    try:
        import parts
        import plan
        import result_file
    finally:
        del sys.path[:2]
    return plan, parts, result_file


def test_the_plan_fits_one_device_call(gpu_modules):
    plan, _, _ = gpu_modules
    assert sum(limit for _, limit in plan.limits(dry=False)) <= plan.TOTAL_S <= 540
    assert sum(limit for _, limit in plan.limits(dry=True)) <= 300  # the CPU dry run: under five minutes
    files = [plan.LOG] + [p.out for p in plan.PARTS if p.out]
    assert len(files) == len(set(files)) <= plan.MAX_FILES
    assert "error" not in plan.show(dry=False)


@pytest.mark.parametrize("name, ok", [
    ("deepspeed-0.19.8-py3-none-any.whl", True),
    ("pydantic_core-2.50.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("pydantic_core-2.50.4-cp311-cp311-manylinux_2_17_x86_64.whl", False),
    ("x-1.0-cp312-cp312-macosx_11_0_arm64.whl", False),
    ("x-1.0-cp312-cp312-manylinux_2_28_aarch64.whl", False),
])
def test_wheels_are_checked_for_the_device(gpu_modules, name, ok):
    plan, _, _ = gpu_modules
    assert (plan._wheel_ok(name) is None) == ok


def test_results_carry_the_commit_from_the_stamp_without_git(gpu_modules, tmp_path, monkeypatch):
    _, _, result_file = gpu_modules
    (tmp_path / "a.py").write_text("one\n")
    monkeypatch.setattr(result_file, "ROOT", tmp_path)
    answers = {("ls-files",): "a.py\n", ("rev-parse", "HEAD"): "abc123\n", ("diff", "--name-only", "HEAD"): ""}
    monkeypatch.setattr(result_file, "_git", lambda *args: answers.get(args))
    record = result_file.stamp(tmp_path / "SOURCE.json")
    assert record["commit"] == "abc123"
    monkeypatch.setattr(result_file, "_git", lambda *args: None)  # the device: no .git
    monkeypatch.setenv("MIMO_SOURCE_STAMP", str(tmp_path / "SOURCE.json"))
    got = result_file.source()
    assert got["commit"] == "abc123" and got["matches"] is True
    (tmp_path / "a.py").write_text("two\n")  # the tree changed after stamping
    assert result_file.source()["matches"] is False


def test_a_hanging_command_names_its_frame_when_it_is_stopped(gpu_modules, monkeypatch):
    _, parts, _ = gpu_modules
    monkeypatch.setattr(parts, "GRACE_S", 2)
    code = "import time\ndef waiting_here():\n    time.sleep(60)\nwaiting_here()\n"
    run = parts.run_limited([sys.executable, "-c", code], 2.0, tail=200)
    assert run["timed_out"] and run["rc"] != 0 and run["seconds"] < 10
    text = "\n".join(run["tail"])
    assert "Fatal Python error: Aborted" in text and "waiting_here" in text, text


def test_junit_reports_are_read_back(gpu_modules, tmp_path):
    _, parts, _ = gpu_modules
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a" time="1.5"/>'
                   '<testcase classname="t" name="b" time="0.1"><failure message="boom"/></testcase>'
                   '<testcase classname="t" name="c" time="0"><skipped message="needs CUDA"/></testcase>'
                   '</testsuite></testsuites>')
    cases = parts._junit(xml)
    assert [(c["test"], c["outcome"], c["seconds"]) for c in cases] == [
        ("t::a", "passed", 1.5), ("t::b", "failed", 0.1), ("t::c", "skipped", 0.0)]
    assert cases[1]["message"] == "boom"


def test_summary_counts_the_files_that_come_back(gpu_modules, tmp_path):
    plan, _, _ = gpu_modules
    (tmp_path / "stage1.json").write_text(json.dumps({"rc": 0, "output_written_s": 3.0, "exited": False,
                                                      "step_s": [1.0]}))
    lines = plan.summary(tmp_path)
    assert lines[0].startswith("1 files") and "exited False" in lines[-1]
    for i in range(plan.MAX_FILES):
        (tmp_path / f"extra{i}.txt").write_text("x")
    assert any(line.startswith("error:") for line in plan.summary(tmp_path))


def test_the_step_plan_measures_batch_2048_and_the_largest(gpu_modules):
    _, parts, _ = gpu_modules
    gpu = parts.step_plan(dry=False)
    assert gpu["base"] == 2048 and gpu["precision"] == "bf16"
    runs = {(size, objective, engine) for size, objective, engine, _ in gpu["runs"]}
    for objective in ("mimo", "xlco"):
        assert {("base", objective, "zero3-resident"), ("base", objective, "zero2"),
                ("largest", objective, "zero3-resident")} <= runs
    assert os.path.basename(parts._step_cmd(gpu, 2048, "mimo", "zero2", True, Path("x"))[1]) == "step.py"


def test_the_gpu_tests_are_found_without_collecting_everything(gpu_modules):
    _, parts, _ = gpu_modules
    files = parts.gpu_test_files()
    assert "tests/test_kernel_infonce.py" in files and "tests/test_kernel_auto.py" in files
    assert "tests/test_tracking.py" not in files  # imports mlflow, which the device lacks


def test_the_step_part_probes_then_measures_and_keeps_every_row(gpu_modules, tmp_path, monkeypatch):
    """A fake step.py that runs out of memory above 16384 rows: the probe stops there, batch 2048 runs on both
    engines, the largest batch is 16384, and every finished run's rows land in step.json."""
    _, parts, _ = gpu_modules
    monkeypatch.setattr(parts, "WORK", tmp_path / "work")
    ran = []

    def fake(cmd, limit_s, env=None, tail=40):
        args = dict(zip(cmd[2::2], cmd[3::2]))
        batch = int(args["--batch"])
        ran.append((batch, args["--objectives"], args["--engines"]))
        if batch > 16384:
            return {"rc": 1, "seconds": 1.0, "limit_s": limit_s, "timed_out": False,
                    "tail": ["torch.OutOfMemoryError: CUDA out of memory"]}
        row = {"objective": args["--objectives"], "engine": args["--engines"], "batch": batch, "ours_s": 1.0,
               "peer_s": 2.0, "ratio": 0.5, "ours_step_peak_bytes": 1, "peer_step_peak_bytes": 2}
        Path(args["--out"]).write_text(json.dumps({"results": [row], "versions": {"deepspeed": "x"}}))
        return {"rc": 0, "seconds": 1.0, "limit_s": limit_s, "timed_out": False, "tail": []}

    monkeypatch.setattr(parts, "run_limited", fake)
    out = tmp_path / "step.json"
    parts.step_part(parts.argparse.Namespace(limit=600.0, out=out, dry_run=False))
    report = json.loads(out.read_text())
    assert [p["batch"] for p in report["probe"]] == [8192, 16384, 32768] and report["largest_batch"] == 16384
    assert "out of memory" in report["probe"][-1]["error"][0]
    measured = {(r["batch"], r["objective"], r["engine"]) for r in report["results"]}
    assert measured == {(2048, "mimo", "zero3-resident"), (2048, "xlco", "zero3-resident"), (2048, "mimo", "zero2"),
                        (2048, "xlco", "zero2"), (16384, "mimo", "zero3-resident"),
                        (16384, "xlco", "zero3-resident")}
    assert report["host"]["source"]["commit"]


def test_the_documented_plan_is_the_plan(gpu_modules):
    plan, _, _ = gpu_modules
    doc = (ROOT / "docs" / "kernel.md").read_text()
    for part in plan.PARTS:
        assert f"| {part.name} | {part.limit_s} | {part.out or plan.LOG} |" in doc, part.name
    assert f'timeout_s={plan.TOTAL_S + 30}' in doc


def test_gpu_test_slices_spread_tests_not_files_over_the_workers(gpu_modules, monkeypatch, tmp_path):
    """pyproject's addopts pin each file to one xdist worker (`--dist loadfile`, for the CPU suite's fixtures); the
    gpu tests sit in two files, so their 8 workers must get tests one by one. pytest reads addopts first and the
    command line after, so the command's own `--dist` decides."""
    _, parts, _ = gpu_modules
    monkeypatch.setattr(parts, "WORK", tmp_path)
    monkeypatch.setenv("TEST_WORKERS", "8")
    commands = []

    def fake(cmd, limit_s, env=None, tail=40):
        commands.append(cmd)
        return {"rc": 0, "seconds": 1.0, "limit_s": limit_s, "timed_out": False, "tail": []}

    monkeypatch.setattr(parts, "run_limited", fake)
    parts.tests_part(parts.argparse.Namespace(limit=600.0, out=tmp_path / "gpu_tests.json", dry_run=False))
    assert len(commands) == len(parts.TEST_SLICES)
    for cmd in commands:
        dist = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--dist"]
        assert cmd[cmd.index("-n") + 1] == "8" and dist[-1:] == ["load"], cmd
