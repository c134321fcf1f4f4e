"""The plan of one lent-GPU call (benchmarks/gpu/run.sh): its parts in priority order, each part's time limit and
the one file it writes under $OUT, and the checks of the carried bundle. Stdlib only: it runs on the device too.

A lent machine gives 15 minutes of device time per session, its start-up included, one command at most ~9 minutes,
and returns at most 8 files from $OUT; so the whole run is one command of at most TOTAL_S seconds whose parts run one
after another, each under its own limit (a part that overruns is stopped, its tracebacks dumped, the next one runs).

    python benchmarks/gpu/plan.py show [--dry-run]     # the plan and its budget
    python benchmarks/gpu/plan.py limits [--dry-run]   # `name limit_s` lines, for run.sh
    python benchmarks/gpu/plan.py check [--bundle .gpu] # the bundle: wheels, models, data, stamp, size to carry
    python benchmarks/gpu/plan.py stamp                # .gpu/SOURCE.json: the commit, for a machine without .git
    python benchmarks/gpu/plan.py summary --out DIR    # what a run left under $OUT, its headline numbers
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOTAL_S = 540            # the parts' schedule; the device call gets timeout_s = TOTAL_S + 30 (setup of the script, summary)
CARRY_LIMIT_MIB = 64     # the working tree that travels plus the carried paths
MAX_FILES = 8            # files returned from $OUT
LOG = "run.log"


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: int          # on the GPU
    dry_limit_s: int      # in the CPU dry run
    out: str | None       # the one file under $OUT it (re)writes after every row
    what: str


PARTS = (
    Part("setup", 40, 20, None, "install the carried wheels (--target /tmp/site), unpack the models (sha256 "
         "checked), the GPU and package versions into run.log"),
    Part("step", 230, 170, "step.json", "P1 stage-2 step vs sentence-transformers, bf16: batch probe (doubling "
         "from 8192, 60 s of its own), then per-device batch 2048 (MIMO and XLCO, ZeRO-3 resident and ZeRO-2) and "
         "the largest that ran (ZeRO-3 resident); samples/s, real tokens/s, peak memory, attention implementation, "
         "a profile of ours"),
    Part("kernel", 130, 20, "infonce.json", "P2 InfoNCE at HEAD: 2048x2048, 2048x16384, 16k, 64k, 256k at d "
         "1024 then 384; eager, torch.compile, inf-cl (fp32 up-cast), fused, auto; the bf16 8192^3 matmul peak"),
    Part("tests", 100, 35, "gpu_tests.json", "P3 pytest -m gpu in five slices (8 xdist workers), each under the time left, every "
         "duration printed (-v --durations=0)"),
    Part("stage1", 40, 55, "stage1.json", "P4 stage 1 through `python -m mimo_ds.train` (faulthandler on): "
         "per-step times, and whether the process exits after writing its output"),
)


def limits(dry: bool) -> list[tuple[str, int]]:
    return [(p.name, p.dry_limit_s if dry else p.limit_s) for p in PARTS]


def show(dry: bool) -> str:
    total = sum(limit for _, limit in limits(dry))
    outs = [LOG] + [p.out for p in PARTS if p.out]
    lines = [f"plan ({'CPU dry run' if dry else 'lent GPU'}): {len(PARTS)} parts, one after another, "
             f"{total} s in all (command limit {TOTAL_S} s); files under $OUT: {', '.join(outs)}"]
    start = 0
    for part, (_, limit) in zip(PARTS, limits(dry)):
        lines.append(f"  {part.name:7s} {limit:4d} s  [{start:3d}-{start + limit:3d} s]  "
                     f"{part.out or '(run.log)':15s} {part.what}")
        start += limit
    if total > TOTAL_S and not dry:
        lines.append(f"error: the parts' limits sum to {total} s > {TOTAL_S} s")
    if len(outs) > MAX_FILES:
        lines.append(f"error: {len(outs)} files under $OUT > {MAX_FILES}")
    return "\n".join(lines)


# -- the bundle ----------------------------------------------------------------------------------------------------
def _wheel_ok(name: str) -> str | None:
    """Why a wheel cannot install on the device's CPython 3.12 / x86-64 manylinux, or None."""
    python, abi, platform = name[:-4].split("-")[-3:]
    if python not in ("py3", "py2.py3", "py312", "cp312"):
        return f"python tag {python}"
    if abi not in ("none", "abi3", "cp312"):
        return f"abi tag {abi}"
    if platform != "any" and not all(p.startswith("manylinux") and p.endswith("x86_64") for p in platform.split(".")):
        return f"platform tag {platform}"
    return None


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _travelling_bytes() -> int:
    """Tracked plus untracked-not-ignored files: what a device call sends besides the carried paths."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=False).stdout.decode().split("\0")
    return sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())


def check(bundle: Path) -> list[str]:
    """Problems with the bundle, one line each (empty: ready to carry)."""
    problems = []
    record_path = bundle / "BUNDLE.json"
    if not record_path.is_file():
        return [f"{record_path} missing: build it with `python benchmarks/gpu/bundle.py`"]
    record = json.loads(record_path.read_text())
    for name, meta in record["wheels"].items():
        wheel = bundle / "whl" / name
        if not wheel.is_file():
            problems.append(f"wheel {name} listed in BUNDLE.json but missing")
            continue
        if why := _wheel_ok(name):
            problems.append(f"wheel {name}: not installable on the device ({why})")
        if wheel.stat().st_size != meta["bytes"]:
            problems.append(f"wheel {name}: {wheel.stat().st_size} bytes, BUNDLE.json says {meta['bytes']}")
        with zipfile.ZipFile(wheel) as z:
            if z.testzip() is not None:
                problems.append(f"wheel {name}: a corrupt member")
    for name in ("student", "teacher"):
        archive = bundle / "models" / record[name]["packed"]["archive"]
        if not archive.is_file() or archive.stat().st_size != record[name]["packed"]["archive_bytes"]:
            problems.append(f"model archive {archive} missing or not the size BUNDLE.json gives")
    for rel, meta in record["data"]["files"].items():
        path = bundle / "data" / rel
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            problems.append(f"data file {path} missing or not the size BUNDLE.json gives")
    if not (bundle / "SOURCE.json").is_file():
        problems.append(f"{bundle / 'SOURCE.json'} missing: run `python benchmarks/gpu/plan.py stamp`")
    carried, tree = _tree_bytes(bundle), _travelling_bytes()
    if carried + tree > CARRY_LIMIT_MIB * 2**20:
        problems.append(f"bundle {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB > "
                        f"{CARRY_LIMIT_MIB} MiB")
    print(f"bundle {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{(carried + tree) / 2**20:.1f} MiB of {CARRY_LIMIT_MIB}; {len(record['wheels'])} wheels, "
          f"{len(record['data']['files'])} data files")
    return problems


def summary(out: Path) -> list[str]:
    """The run's files and its headline numbers, printed last (the device tool returns the output's tail)."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines = [f"{len(files)} files under {out} (at most {MAX_FILES} come back): "
             + ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in files)]
    if len(files) > MAX_FILES:
        lines.append(f"error: more than {MAX_FILES} files")
    read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None  # noqa: E731
    if step := read("step.json"):
        lines.append(f"step: source {step['host'].get('source', {}).get('commit')}, largest batch "
                     f"{step.get('largest_batch')}, probe {[(p['batch'], p.get('rc')) for p in step['probe']]}")
        for r in step["results"]:
            lines.append(f"  {r['objective']:5s} {r['engine']:15s} batch {r['batch']:6d}: ours {r['ours_s']:.3f} s "
                         f"vs peer {r['peer_s']:.3f} s (x{r['ratio']:.2f}), peaks {r['ours_step_peak_bytes']} / "
                         f"{r['peer_step_peak_bytes']} B, attention {r.get('attention', {}).get('ours')}")
        for a in step["attempts"]:
            if a.get("rc") or a.get("skipped"):
                lines.append(f"  not done: {a['name']}: {a.get('skipped') or 'rc ' + str(a['rc'])}")
    if kern := read("infonce.json"):
        ceil = kern.get("ceilings") or {}
        lines.append(f"kernel: 8192^3 matmul {ceil.get('matmul_8192_tflops')} TFLOP/s, "
                     f"{sum('seconds' in r for r in kern['results'])} of {len(kern['results'])} rows timed")
        for r in kern["results"]:
            took = f"{r['seconds'] * 1e3:9.2f} ms" if "seconds" in r else f"{'-':>12s} {r.get('skipped', '')[:40]}"
            lines.append(f"  {r['impl']:8s} {r['M']:6d}x{r['N']:<6d} d={r['d']:<4d} {took} {r.get('auto_path', '')}")
    if tests := read("gpu_tests.json"):
        lines.append(f"tests: {tests.get('counts')} "
                     + ", ".join(f"{s['name']} {s.get('counts', s.get('skipped'))}" for s in tests["slices"]))
    if st := read("stage1.json"):
        lines.append(f"stage1: rc {st['rc']}, output at {st['output_written_s']} s, exited {st['exited']}, "
                     f"step_s {st['step_s']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["show", "limits", "check", "stamp", "summary"])
    parser.add_argument("--out", type=Path, help="summary: the run's $OUT")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--bundle", type=Path, default=ROOT / ".gpu")
    args = parser.parse_args(argv)
    if args.command == "show":
        text = show(args.dry_run)
        print(text)
        return 1 if "error:" in text else 0
    if args.command == "summary":
        lines = summary(args.out)
        print("\n".join(lines))
        return 1 if any(line.startswith("error:") for line in lines) else 0
    if args.command == "limits":
        print("\n".join(f"{name} {limit}" for name, limit in limits(args.dry_run)))
        return 0
    if args.command == "stamp":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from result_file import stamp

        record = stamp(args.bundle / "SOURCE.json")
        print(f"stamped {args.bundle / 'SOURCE.json'}: commit {record['commit'][:12]}, "
              f"{len(record['modified'])} modified tracked files, {len(record['files'])} files digested")
        return 0
    problems = check(args.bundle)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
