"""What the extension tests share (an objective, tests/test_objective_extension.py; a record kind,
tests/test_record_kinds.py): a first batch read through a freshly written teacher cache, and a training run through a
driver script that declares the extension before it hands over to `mimo_ds.train`."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from mimo_ds.batch import Batch
from mimo_ds.config import RunConfig, load_config
from mimo_ds.data.loader import LoaderSpec, build_train_loader
from mimo_ds.data.teacher_cache import write_cache
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import Objective

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "stage2_mimo.yaml"


def cached_batch(shards: Path, objective: type[Objective], overrides: list[str], cache: Path, batch_size: int,
                 **spec: Any) -> tuple[RunConfig, Teacher, Batch]:
    """The run config, its teacher and the first batch for `objective` over `shards`, the teacher roles read from a
    cache written into `cache` first."""
    cfg = load_config(RECIPE, [f"data.train={shards}", *overrides, f"data.teacher_cache={cache}"])
    torch.manual_seed(cfg.seed)
    teacher = Teacher.load(cfg.teacher)
    write_cache(teacher, objective, shards, cache, progress=False)
    loader = build_train_loader(LoaderSpec(
        shards=shards, objective=objective.kind, student_tokenizer=teacher.tokenizer, batch_size=batch_size,
        teacher_query_prompt=cfg.teacher.query_prompt, rank=0, world_size=1, num_workers=0, teacher_cache=cache,
        **spec))
    return cfg, teacher, next(iter(loader))


def train_with(driver: Path, overrides: list[str], out: Path) -> list[dict[str, Any]]:
    """Train with the tiny stage-2 recipe through `driver` into `out`; the lines of its metrics.jsonl."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    args = ["--config", str(RECIPE)]
    for o in (f"output_dir={out}", *overrides):
        args += ["--set", o]
    proc = subprocess.run([sys.executable, str(driver), *args], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
