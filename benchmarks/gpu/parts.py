"""The Python parts of a lent-GPU run (benchmarks/gpu/run.sh): each runs its commands one after another, each under
the time the part has left, and rewrites its one JSON under $OUT after every row, so a part cut short keeps what
finished. Every child runs in its own process group: at its limit the group gets SIGABRT (with PYTHONFAULTHANDLER=1
each Python process dumps every thread's traceback into run.log, naming the frame a hang sits in), ten seconds later
SIGKILL.

    python benchmarks/gpu/parts.py step   --limit S --out OUT/step.json [--dry-run]
    python benchmarks/gpu/parts.py tests  --limit S --out OUT/gpu_tests.json [--dry-run]
    python benchmarks/gpu/parts.py stage1 --limit S --out OUT/stage1.json [--dry-run]

Paths: the bundle in $BUNDLE (default .gpu), the unpacked models in $MODELS (default /tmp/models), scratch in $WORK.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from result_file import write_result  # noqa: E402

BUNDLE = Path(os.environ.get("BUNDLE", ROOT / ".gpu")).resolve()
MODELS = Path(os.environ.get("MODELS", "/tmp/models"))
WORK = Path(os.environ.get("WORK", "/tmp/mimo_gpu_work"))
GRACE_S = 10  # between SIGABRT (tracebacks) and SIGKILL


class Clock:
    """The part's own deadline: every command gets at most what is left, less a reserve for the SIGKILL grace and
    for writing results, so the part ends before the SIGABRT run.sh sends at its own limit."""

    def __init__(self, limit_s: float, reserve_s: float = GRACE_S + 2.0):
        self.end = time.time() + limit_s - reserve_s

    def left(self) -> float:
        return self.end - time.time()


def run_limited(cmd: list[str], limit_s: float, env: dict | None = None, tail: int = 40) -> dict:
    """Run `cmd` (output streamed to our stdout, i.e. run.log) for at most `limit_s` seconds; at the limit its
    Python processes dump their tracebacks (SIGABRT under PYTHONFAULTHANDLER=1), then they are killed."""
    started = time.time()
    child_env = {**os.environ, **(env or {}), "PYTHONFAULTHANDLER": "1"}
    print(f"-- ({limit_s:.0f} s) {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    last: collections.deque[str] = collections.deque(maxlen=tail)

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            last.append(line.rstrip("\n"))
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, limit_s))
    except subprocess.TimeoutExpired:
        timed_out = True
        print(f"-- limit {limit_s:.0f} s reached: SIGABRT to the process group (tracebacks follow)", flush=True)
        _abort(proc)
    reader.join(timeout=5)
    seconds = time.time() - started
    print(f"-- rc={proc.returncode} in {seconds:.1f} s{' (timed out)' if timed_out else ''}", flush=True)
    return {"command": cmd, "rc": proc.returncode, "seconds": round(seconds, 1), "limit_s": round(limit_s),
            "timed_out": timed_out, "tail": list(last)}


def _abort(proc: subprocess.Popen) -> None:
    """SIGABRT to the process group (PYTHONFAULTHANDLER makes each Python process print its tracebacks), then
    SIGKILL after the grace period."""
    _signal_group(proc, signal.SIGABRT)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _skip(name: str, clock: Clock) -> dict:
    return {"name": name, "skipped": f"{clock.left():.0f} s left in the part"}


# -- P1: the stage-2 step against sentence-transformers ---------------------------------------------------------------
def step_plan(dry: bool) -> dict:
    """Sizes and settings of the step part (the CPU dry run: the same commands, toy sizes, fp32)."""
    if dry:
        return {"precision": "fp32", "mini_batch": 4, "max_length": 16, "warmup": 1, "reps": 1, "probe": [8, 16],
                "probe_limit_s": 75, "run_limit_s": 85, "base": 8,
                "runs": [("base", "mimo", "zero3-resident", True), ("largest", "xlco", "zero2", False)]}
    return {"precision": "bf16", "mini_batch": 512, "max_length": 64, "warmup": 2, "reps": 3,
            "probe": [8192, 16384, 32768, 65536], "probe_limit_s": 60, "run_limit_s": 60, "base": 2048,
            # The goal is at batch 2048 (both objectives, both engines) first; the largest batch after.
            "runs": [("base", "mimo", "zero3-resident", True), ("base", "xlco", "zero3-resident", False),
                     ("base", "mimo", "zero2", False), ("base", "xlco", "zero2", False),
                     ("largest", "mimo", "zero3-resident", False), ("largest", "xlco", "zero3-resident", False)]}


def _step_cmd(plan: dict, batch: int, objective: str, engine: str, profile: bool, out: Path,
              warmup: int | None = None, reps: int | None = None) -> list[str]:
    return [sys.executable, "benchmarks/step.py", "--data", str(BUNDLE / "data"), "--student", str(MODELS / "student"),
            "--teacher", str(MODELS / "teacher"), "--precision", plan["precision"], "--objectives", objective,
            "--engines", engine, "--batch", str(batch), "--mini-batch", str(plan["mini_batch"]),
            "--max-length", str(plan["max_length"]),
            "--warmup", str(plan["warmup"] if warmup is None else warmup),
            "--reps", str(plan["reps"] if reps is None else reps), "--out", str(out)] + \
        (["--profile"] if profile else [])


def step_part(args: argparse.Namespace) -> int:
    clock, plan = Clock(args.limit), step_plan(args.dry_run)
    parts = WORK / "step"
    parts.mkdir(parents=True, exist_ok=True)
    report: dict = {"plan": {k: v for k, v in plan.items()}, "probe": [], "attempts": [], "results": []}
    save = lambda: write_result("step", report, args.out, quiet=True)  # noqa: E731
    save()
    # The probe: ours and the peer, one warm-up and one timed step each, doubling the per-device batch until a size
    # fails (out of memory) or the probe's own limit ends; "largest" is the largest that ran both.
    probe_end = time.time() + plan["probe_limit_s"]
    largest = None
    for batch in plan["probe"]:
        left = min(probe_end - time.time(), clock.left())
        if left < 20:
            report["probe"].append({"batch": batch, "skipped": f"{left:.0f} s left in the probe"})
            break
        out = parts / f"probe_{batch}.json"
        run = run_limited(_step_cmd(plan, batch, "mimo", "zero3-resident", False, out, warmup=1, reps=1), left)
        entry = {"batch": batch, **{k: run[k] for k in ("rc", "seconds", "limit_s", "timed_out")}}
        if run["rc"] == 0 and out.is_file():
            result = json.loads(out.read_text())["results"][0]
            entry.update({k: result.get(k) for k in ("ours_s", "peer_s", "ours_step_peak_bytes",
                                                     "peer_step_peak_bytes")})
            largest = batch
        else:
            entry["error"] = [line for line in run["tail"] if "Error" in line or "error" in line][-3:] or run["tail"][-3:]
        report["probe"].append(entry)
        save()
        if run["rc"] != 0:
            break
    report["largest_batch"] = largest
    report["largest_batch_basis"] = ("largest per-device batch of the doubling probe (MIMO, ZeRO-3 resident) at "
                                     "which ours and the peer both finished a step within the probe's "
                                     f"{plan['probe_limit_s']} s; see `probe` for what stopped it")
    for size, objective, engine, profile in plan["runs"]:
        batch = plan["base"] if size == "base" else largest
        name = f"{objective}_{engine}_{size}"
        if batch is None or (size == "largest" and batch == plan["base"]):
            report["attempts"].append({"name": name, "skipped": "no larger batch ran in the probe"})
            save()
            continue
        if clock.left() < 25:
            report["attempts"].append(_skip(name, clock))
            save()
            continue
        out = parts / f"{name}.json"
        run = run_limited(_step_cmd(plan, batch, objective, engine, profile, out), min(plan["run_limit_s"],
                                                                                        clock.left()))
        report["attempts"].append({"name": name, "batch": batch, **{k: run[k] for k in ("rc", "seconds", "limit_s",
                                                                                          "timed_out")},
                                   **({"tail": run["tail"][-8:]} if run["rc"] else {})})
        if run["rc"] == 0 and out.is_file():
            done = json.loads(out.read_text())
            report["versions"] = done.get("versions")
            report["results"] += done["results"]
        save()
    _print_steps(report)
    return 0


def _print_steps(report: dict) -> None:
    print(f"\n{'objective':9s} {'engine':15s} {'batch':>6s} {'ours s':>7s} {'peer s':>7s} {'ours/peer':>9s} "
          f"{'ours GiB':>8s} {'peer GiB':>8s} attention")
    for r in report["results"]:
        gib = lambda b: f"{b / 2**30:8.2f}" if b is not None else "       -"  # noqa: E731
        print(f"{r['objective']:9s} {r['engine']:15s} {r['batch']:6d} {r['ours_s']:7.3f} {r['peer_s']:7.3f} "
              f"{r['ratio']:9.2f} {gib(r['ours_step_peak_bytes'])} {gib(r['peer_step_peak_bytes'])} "
              f"{r.get('attention', {}).get('ours')}")


# -- P3: the GPU tests in slices --------------------------------------------------------------------------------------
#: (name, -k expression) in order: the cheap ones first, the autotuned ones (every config compiled) last.
TEST_SLICES = (
    ("other", "not gpu_matches_formula and not gpu_workspace"),
    ("workspace", "gpu_workspace"),
    ("blocks-16", "gpu_matches_formula and not autotuned and not 64x128x64"),
    ("blocks-64x128x64", "gpu_matches_formula and 64x128x64"),
    ("autotuned", "gpu_matches_formula and autotuned"),
)


def gpu_test_files() -> list[str]:
    """The test modules that hold `gpu`-marked tests: collecting all of tests/ would import modules whose packages
    the device lacks (mlflow, the model wheels), and a collection error there would stop the GPU tests too."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in path.read_text())


def _junit(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], \
                    (found.get("message") or "")[:300]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), **({"message": message} if message else {})})
    return cases


def tests_part(args: argparse.Namespace) -> int:
    clock = Clock(args.limit)
    workers = os.environ.get("TEST_WORKERS", "0" if args.dry_run else "8")
    paths = os.environ.get("TEST_PATHS", "").split() or gpu_test_files()
    report: dict = {"marker": "gpu", "paths": paths, "workers": int(workers), "slices": []}
    for name, expr in TEST_SLICES:
        if clock.left() < 15:
            report["slices"].append(_skip(name, clock))
            write_result("gpu_tests", report, args.out, quiet=True)
            continue
        xml = WORK / f"tests_{name}.xml"
        xml.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *paths, "-k", expr, "-v", "-rfE", "-p",
               "no:cacheprovider", "--durations=0", "--continue-on-collection-errors", f"--junitxml={xml}"] + \
            (["-n", workers, "--dist", "load"] if workers != "0" else [])  # per test: the gpu tests sit in 2 files
        run = run_limited(cmd, clock.left())
        cases = _junit(xml)
        counts = collections.Counter(c["outcome"] for c in cases)
        report["slices"].append({"name": name, "k": expr, **{k: run[k] for k in ("rc", "seconds", "limit_s",
                                                                                 "timed_out")},
                                 "counts": dict(counts), "cases": cases,
                                 **({"tail": run["tail"][-15:]} if not cases else {})})
        write_result("gpu_tests", report, args.out, quiet=True)
        print(f"== tests {name}: {dict(counts)} rc={run['rc']}", flush=True)
    total = collections.Counter(c["outcome"] for s in report["slices"] for c in s.get("cases", []))
    report["counts"] = dict(total)
    write_result("gpu_tests", report, args.out, quiet=True)
    print(f"== tests: {dict(total)}", flush=True)
    return 0


# -- P4: stage 1 through the entry point --------------------------------------------------------------------------------
def stage1_part(args: argparse.Namespace) -> int:
    """`python -m mimo_ds.train` on the bundled pairs: per-step times from its metrics.jsonl, when its output
    appeared, and whether the process exited within 15 s after it (else its tracebacks are dumped with
    SIGABRT, which names the frame it waits in, and the process tree is recorded)."""
    clock = Clock(args.limit)
    folder = WORK / "stage1"
    steps, batch, precision = (2, 8, "fp32") if args.dry_run else (6, 256, "bf16")
    cmd = [sys.executable, "-m", "mimo_ds.train", "--config", "recipes/demo/stage1.yaml", "--overwrite",
           "--set", f"student.path={MODELS / 'student'}", "--set", f"teacher.path={MODELS / 'teacher'}",
           "--set", f"deepspeed={ROOT / 'ds_configs' / 'zero3.json'}", "--set", f"precision={precision}",
           "--set", "tracking.enabled=false", "--set", "eval.benchmarks=[]", "--set", "data.teacher_cache=null",
           "--set", f"max_steps={steps}", "--set", "epochs=1000", "--set", "log_every=1",
           "--set", f"data.train={BUNDLE / 'data' / 'pairs'}", "--set", f"output_dir={folder}",
           "--set", f"batch.per_device={batch}"]
    report: dict = {"command": cmd, "steps": steps, "batch": batch, "precision": precision}
    written = folder / "student" / "config.json"
    started = time.time()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    print(f"-- ({clock.left():.0f} s) {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    output_at = None
    exit_wait = 15
    while proc.poll() is None and clock.left() > 0:
        if output_at is None and written.is_file():
            output_at = time.time() - started
            print(f"-- output written after {output_at:.1f} s; waiting up to {exit_wait} s for the exit", flush=True)
        if output_at is not None and time.time() - started > output_at + exit_wait:
            break
        time.sleep(0.5)
    if output_at is None and written.is_file():
        output_at = time.time() - started
    exited = proc.poll() is not None
    report.update({"rc": proc.returncode, "output_written_s": output_at, "exited": exited,
                   "exit_s": round(time.time() - started, 1) if exited else None})
    if not exited:
        report["process_tree"] = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,wchan:20,cmd", "-g",
                                                 str(proc.pid)], capture_output=True, text=True).stdout
        print(f"-- still running {time.time() - started:.0f} s in: SIGABRT (tracebacks follow)\n"
              f"{report['process_tree']}", flush=True)
        _abort(proc)
        report["rc_after_abort"] = proc.returncode
    metrics = folder / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() \
        else []
    report["step_s"] = [r.get("throughput/step_s") for r in rows if "loss/total" in r]
    report["loss"] = [r.get("loss/total") for r in rows if "loss/total" in r]
    report["metrics_rows"] = rows
    write_result("stage1", report, args.out, quiet=True)
    print(f"== stage1: rc={report['rc']} output at {output_at} s, exited={exited}, step_s={report['step_s']}",
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["step", "tests", "stage1"])
    parser.add_argument("--limit", type=float, required=True, help="seconds for the whole part")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    return {"step": step_part, "tests": tests_part, "stage1": stage1_part}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
