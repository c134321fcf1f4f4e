"""A run's output folder: what a run writes there, and what identifies the run a checkpoint there belongs to.

Read by preflight (before any process group: a fresh run refuses to overwrite an earlier run's outputs without
`--overwrite`; a resume refuses a checkpoint made by a different run) and by the trainer.

`--overwrite` never deletes first: `SetAside` moves the earlier outputs into `<output_dir>/.replaced-<UTC time>/`
(a rename, instant, on the same filesystem), deletes them once the new run has written its first checkpoint or its
stage output, and moves them back when the new run fails before that. Only a hard kill in between leaves them in
`.replaced-*`; the next refusal in that output_dir names the folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from mimo_ds.checkpoint import CHECKPOINTS_DIR
from mimo_ds.config import RunConfig
from mimo_ds.data.audit import AUDIT_DIR
from mimo_ds.data.bad_report import BAD_RECORDS_FILE
from mimo_ds.data.shards import read_index
from mimo_ds.models.stage_output import (
    LEGACY_PROJECTION_FILE,
    PROJECTION_FILE,
    STUDENT_DIR,
    STUDENT_META,
)

METRICS_FILE = "metrics.jsonl"
REPLACED_PREFIX = ".replaced-"
#: Everything a run writes into its output_dir, and nothing else: what --overwrite sets aside.
RUN_OUTPUTS = (CHECKPOINTS_DIR, STUDENT_DIR, PROJECTION_FILE, LEGACY_PROJECTION_FILE, STUDENT_META, AUDIT_DIR,
               METRICS_FILE, BAD_RECORDS_FILE)


def existing_outputs(output_dir: Path) -> list[str]:
    """The names of earlier run outputs in `output_dir` (what a fresh run would overwrite)."""
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def replaced_folders(output_dir: Path) -> list[Path]:
    """The `.replaced-*` folders of earlier `--overwrite`s whose new run never got as far as a checkpoint."""
    return sorted(output_dir.glob(REPLACED_PREFIX + "*")) if output_dir.is_dir() else []


class SetAside:
    """--overwrite on rank 0: the earlier run's outputs, moved out of the way until the new run has replaced them."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.folder: Path | None = None

    def move(self) -> None:
        """Move every earlier output into a fresh `.replaced-<UTC time>` folder inside output_dir."""
        found = existing_outputs(self.output_dir)
        if not found:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = self.output_dir / f"{REPLACED_PREFIX}{stamp}"
        for n in range(1, 1000):
            try:
                folder.mkdir()
                break
            except FileExistsError:
                folder = self.output_dir / f"{REPLACED_PREFIX}{stamp}-{n}"
        for name in found:
            (self.output_dir / name).rename(folder / name)
        self.folder = folder

    def discard(self) -> None:
        """The new run has written a checkpoint or its stage output: the replaced outputs (of this and any earlier
        --overwrite that never got this far) go."""
        for folder in replaced_folders(self.output_dir):
            shutil.rmtree(folder, ignore_errors=True)
        self.folder = None

    def restore(self) -> str | None:
        """The new run failed before replacing them: its partial outputs go and the earlier ones come back. Returns
        the line that says so (or where they still are), None when nothing was set aside."""
        if self.folder is None:
            return None
        folder, self.folder = self.folder, None
        try:
            for name in existing_outputs(self.output_dir):  # the failed run's own, written before it failed
                path = self.output_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            for item in folder.iterdir():
                item.rename(self.output_dir / item.name)
            folder.rmdir()
        except OSError as exc:
            return f"the earlier run's outputs could not all be moved back ({exc}): what remains is in {folder}"
        return f"the earlier run's outputs, set aside for --overwrite, are back in {self.output_dir}"


def run_identity(cfg: RunConfig, world: int) -> dict[str, Any]:
    """What a checkpoint records in its meta and a resume must match exactly: ZeRO's partitions depend on the world
    size, the loader's slot plan and exact resume on the rest."""
    return {"world_size": world, "num_workers": cfg.data.num_workers, "per_device": cfg.batch.per_device,
            "grad_accum": cfg.batch.grad_accum, "shards": read_index(cfg.data.train).fingerprint(),
            "seed": cfg.seed, "objective": cfg.objective.kind}


def identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, now Y` for every key of `now` (this run's `run_identity`) that differs in `saved` (a
    checkpoint's meta; a key it lacks counts as a difference)."""
    return [f"{key}: checkpoint {saved.get(key)!r}, now {value!r}" for key, value in now.items()
            if saved.get(key) != value]
