"""Results of `benchmarks/gpu/train_step.sh`, gathered into a few JSON files (a lent machine returns at most 8).

    collect.py record LOG NAME RC SECONDS LIMIT -- COMMAND...   # one line per step of the script (JSON lines)
    collect.py train --work DIR --log LOG --out FILE [--note K=V ...]   # per-step losses of the training runs
    collect.py merge --parts DIR --batch N --log LOG --out FILE [--bundle BUNDLE.json]   # step-benchmark parts

Only `train` imports torch (for the host record of `result_file`); the others are stdlib only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for result_file

STAGES = ("stage1", "stage2_mimo")


def _log_lines(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def record(args: argparse.Namespace) -> int:
    entry = {"step": args.name, "rc": int(args.rc), "seconds": int(args.seconds), "limit_s": int(args.limit),
             "command": args.cmd}
    with open(args.log, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return 0


def _stage(folder: Path, run: dict | None) -> dict:
    """One stage's per-step losses (its own metrics.jsonl, written by rank 0 every step) and what it cost."""
    out: dict = {"run": run, "output_dir": str(folder)}
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        out["error"] = f"no {metrics}"
        return out
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss/total" in r]
    loss = [r["loss/total"] for r in steps]
    out.update({
        "steps": len(steps), "loss": loss, "first": loss[0] if loss else None, "last": loss[-1] if loss else None,
        "last_minus_first": loss[-1] - loss[0] if loss else None,
        "mean_first_3": statistics.mean(loss[:3]) if loss else None,
        "mean_last_3": statistics.mean(loss[-3:]) if loss else None,
        "parts": {k: [r.get(k) for r in steps] for k in sorted({k for r in steps for k in r}) if k.startswith("loss/")
                  and k != "loss/total"},
        "lr": [r.get("lr") for r in steps], "grad_norm": [r.get("optim/grad_norm") for r in steps],
        "step_s": [r.get("throughput/step_s") for r in steps],
        "step_s_median_after_2": statistics.median([r["throughput/step_s"] for r in steps[2:]]) if len(steps) > 2
        else None,
        "samples_per_s_median_after_2": statistics.median([r["throughput/samples_per_s"] for r in steps[2:]])
        if len(steps) > 2 else None,
        "peak_gib": max((r.get("memory/peak_gib", 0.0) for r in steps), default=None),
        "skipped_steps": steps[-1].get("guard/skipped_steps") if steps else None,
        "finished": (folder / "student" / "config.json").is_file(),
    })
    return out


def train(args: argparse.Namespace) -> int:
    from result_file import write_result

    runs = {r["step"]: r for r in _log_lines(args.log)}
    notes = dict(n.split("=", 1) for n in args.note)
    payload = {"notes": notes, "stages": {name: _stage(args.work / name, runs.get(f"train_{name}"))
                                          for name in STAGES}}
    write_result("train", payload, args.out)
    for name, stage in payload["stages"].items():
        if stage.get("loss"):
            print(f"{name}: {stage['steps']} steps, loss {stage['first']:.4f} → {stage['last']:.4f}, "
                  f"median step {stage['step_s_median_after_2']}")
        else:
            print(f"{name}: {stage.get('error')}")
    return 0


def merge(args: argparse.Namespace) -> int:
    """The finished (objective, engine) parts of one batch size in one file, with every attempt's status: written
    after each part, so a step stopped by its time limit keeps what finished before it."""
    parts = sorted(args.parts.glob(f"step_{args.batch}_*.json"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(p.read_text()) for p in parts]
    if not records:
        merged: dict = {"benchmark": "step", "results": []}
    else:
        merged = {k: v for k, v in records[-1].items() if k != "results"}
        merged["results"] = [r for rec in records for r in rec.get("results", [])]
    merged["attempts"] = [r for r in _log_lines(args.log) if r["step"].startswith(f"step_{args.batch}_")]
    if args.bundle and args.bundle.is_file():
        bundle = json.loads(args.bundle.read_text())
        rows = bundle.get("data", {}).get("records", {})
        merged["bundle"] = {
            "data": f"the demo's shards ({rows.get('pairs')} stage-1 pairs, {rows.get('rows')} stage-2 rows); a batch "
                    "larger than the corpus is drawn with replacement (data.resampled), so rows repeat within a batch",
            "student": bundle.get("student", {}).get("source"),
            "teacher": f"all-MiniLM-L6-v2 in bf16 with {bundle.get('teacher', {}).get('rows_zeroed')} of "
                       f"{bundle.get('teacher', {}).get('vocab')} word-embedding rows zeroed (ids no text of the "
                       "bundled data produces; outputs on that data checked identical); see BUNDLE.json",
        }
    args.out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"{args.out}: {len(merged['results'])} results, {len(merged['attempts'])} attempts")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    for name in ("log", "name", "rc", "seconds", "limit"):
        rec.add_argument(name)
    rec.add_argument("cmd", nargs=argparse.REMAINDER)
    tr = sub.add_parser("train")
    tr.add_argument("--work", type=Path, required=True)
    tr.add_argument("--log", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--note", action="append", default=[], metavar="KEY=VALUE")
    mg = sub.add_parser("merge")
    mg.add_argument("--parts", type=Path, required=True)
    mg.add_argument("--batch", required=True)
    mg.add_argument("--log", type=Path, required=True)
    mg.add_argument("--out", type=Path, required=True)
    mg.add_argument("--bundle", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        args.log = Path(args.log)
        args.cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return record(args)
    return {"train": train, "merge": merge}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
