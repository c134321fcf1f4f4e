"""Checkpoint cost for a recipe's model: size on disk, time to write, time to restore (engine + RNG + loader).

Runs one process (world 1) on the recipe's model under its DeepSpeed config: sets up the stage, trains one step (so
the optimizer has its state), then writes and restores a checkpoint `--repeat` times, timing `save_checkpoint`
(every file, renamed into place) and `read_own` + `load_engine` (what `--resume` adds to a run's start). Prints a
table and writes JSON with the host's details.

    python benchmarks/checkpoint.py --recipe recipes/demo/stage1.yaml --data runs/demo/data/pairs [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from result_file import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(recipe: Path, data: Path, overrides: list[str], repeat: int) -> dict:
    import torch

    from mimo_ds.config import load_config
    from mimo_ds.train import fill_rendezvous_env
    from mimo_ds.trainer import save_checkpoint, setup, train

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    fill_rendezvous_env()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(recipe, [f"data.train={data}", f"output_dir={tmp}", "max_steps=1", "eval.benchmarks=[]",
                                   "tracking.enabled=false", "checkpoint.every_steps=null",
                                   f"checkpoint.keep={repeat + 1}", *overrides])
        s = setup(cfg)
        train(s)
        saves, loads, sizes = [], [], []
        for i in range(repeat):
            started = time.perf_counter()
            folder = save_checkpoint(s, 1 + i)
            saves.append(time.perf_counter() - started)
            sizes.append(folder_bytes(folder))
            started = time.perf_counter()
            s.checkpoints.load_engine(s.engine, s.checkpoints.read_own(folder))
            loads.append(time.perf_counter() - started)
        params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in s.engine.module.parameters())
    return {"recipe": str(recipe), "student": cfg.student.path, "parameters": params,
            "zero_stage": json.loads(cfg.deepspeed.read_text())["zero_optimization"]["stage"],
            "precision": cfg.precision, "checkpoint_mib": statistics.median(sizes) / 2**20,
            "save_s": {"median": statistics.median(saves), "all": saves},
            "restore_s": {"median": statistics.median(loads), "all": loads}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo/stage1.yaml"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data/pairs"), help="the recipe's shard folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/checkpoint.json)")
    args = parser.parse_args()
    result = measure(args.recipe, args.data, args.overrides, args.repeat)
    print(f"{'student':<40} {'params':>12} {'size MiB':>9} {'save s':>7} {'restore s':>9}")
    print(f"{result['student']:<40} {result['parameters']:>12,} {result['checkpoint_mib']:>9.1f} "
          f"{result['save_s']['median']:>7.2f} {result['restore_s']['median']:>9.2f}")
    import deepspeed

    write_result("checkpoint", {"versions": {"deepspeed": deepspeed.__version__}, "results": [result]}, args.out)


if __name__ == "__main__":
    main()
