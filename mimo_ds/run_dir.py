"""A run's output folder: what a run writes there, and what identifies the run a checkpoint there belongs to.

Read by preflight (before any process group: a fresh run refuses to overwrite an earlier run's outputs without
`--overwrite`; a resume refuses a checkpoint made by a different run) and by the trainer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mimo_ds.checkpoint import CHECKPOINTS_DIR
from mimo_ds.config import RunConfig
from mimo_ds.data.audit import AUDIT_DIR
from mimo_ds.data.bad_report import BAD_RECORDS_FILE
from mimo_ds.data.shards import read_index
from mimo_ds.stage_output import (
    LEGACY_PROJECTION_FILE,
    PROJECTION_FILE,
    STUDENT_DIR,
    STUDENT_META,
)

METRICS_FILE = "metrics.jsonl"
#: Everything a run writes into its output_dir, and nothing else: what --overwrite removes.
RUN_OUTPUTS = (CHECKPOINTS_DIR, STUDENT_DIR, PROJECTION_FILE, LEGACY_PROJECTION_FILE, STUDENT_META, AUDIT_DIR,
               METRICS_FILE, BAD_RECORDS_FILE)


def existing_outputs(output_dir: Path) -> list[str]:
    """The names of earlier run outputs in `output_dir` (what a fresh run would overwrite)."""
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def clear_outputs(output_dir: Path) -> None:
    """--overwrite: remove exactly what an earlier run wrote into output_dir, nothing else."""
    for name in existing_outputs(output_dir):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_identity(cfg: RunConfig, world: int) -> dict[str, Any]:
    """What a checkpoint records and a resume must match (`mimo_ds.checkpoint.IDENTITY_KEYS`)."""
    return {"world_size": world, "num_workers": cfg.data.num_workers, "per_device": cfg.batch.per_device,
            "grad_accum": cfg.batch.grad_accum, "shards": read_index(cfg.data.train).fingerprint(),
            "seed": cfg.seed, "objective": cfg.objective.kind}
