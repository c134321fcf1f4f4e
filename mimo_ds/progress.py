"""Per-step throughput, padding efficiency and memory, shown on rank 0's progress bar and returned as metrics for
tracking."""

from __future__ import annotations

import psutil
import torch
from tqdm import tqdm

from mimo_ds.batch import Batch
from mimo_ds.chunking import field_counts


def _count(micro_batches: list[Batch]) -> tuple[int, int]:
    """Samples (rows) and real tokens (every tokenised role, student and teacher)."""
    samples = sum(len(batch) for batch in micro_batches)
    tokens = sum(int(t["attention_mask"].sum()) for batch in micro_batches for t in batch.tokens())
    return samples, tokens


def padding_efficiency(micro_batches: list[Batch], mini_batch: int | None) -> float:
    """Real tokens / tokens computed by the student's passes (rows × columns of every chunk it runs, by the step's
    length-grouped rule): 1.0 means no compute spent on padding."""
    real, computed = field_counts((t["attention_mask"] for b in micro_batches for t in b.student.values()), mini_batch)
    return real / computed if computed else 1.0


def peak_memory_gib() -> float:
    """Peak accelerator memory where there is one, else this process's resident memory (CPU runs)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


class StepMeter:
    """Turns one step's loss parts and timing into metrics (`loss/*`, `lr`, `throughput/*` with the student's padding
    efficiency, `memory/*`)."""

    def __init__(self, total: int, enabled: bool, desc: str, initial: int = 0) -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)

    def update(self, parts: dict[str, float], micro_batches: list[Batch], lr: float, seconds: float,
               world_size: int, mini_batch: int | None) -> dict[str, float]:
        """`mini_batch`: the run's cached-pass chunk (None: one direct pass), for the padding efficiency."""
        samples, tokens = _count(micro_batches)
        metrics = {f"loss/{name}": value for name, value in parts.items()}
        metrics.update({
            "lr": lr,
            "throughput/samples_per_s": samples * world_size / seconds,
            "throughput/tokens_per_s": tokens * world_size / seconds,
            "throughput/step_s": seconds,
            "throughput/padding_efficiency": padding_efficiency(micro_batches, mini_batch),
            "memory/peak_gib": peak_memory_gib(),
        })
        self.bar.set_postfix({
            **{k.removeprefix("loss/"): f"{v:.4f}" for k, v in metrics.items() if k.startswith("loss/")},
            "lr": f"{lr:.2e}", "samples/s": f"{metrics['throughput/samples_per_s']:.1f}",
            "tok/s": f"{metrics['throughput/tokens_per_s']:.0f}",
            "pad eff": f"{metrics['throughput/padding_efficiency']:.0%}", "mem": f"{metrics['memory/peak_gib']:.2f}G",
        })
        self.bar.update(1)
        return metrics

    def close(self) -> None:
        self.bar.close()
