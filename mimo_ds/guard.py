"""Numerical guards: a step whose loss or gradient norm is not finite changes no weight, and a run that keeps
producing them stops with a message instead of training on garbage.

The skip itself is DeepSpeed's: its ZeRO-2/3 optimizers compute the global gradient norm (all-reduced, so every rank
agrees) and, when it is not finite, drop the step's gradients and leave weights, optimizer state and learning-rate
schedule untouched (`engine.skipped_steps` counts it). A non-finite loss always gives non-finite gradients; the
guard checks that DeepSpeed did skip such a step (the ranks agree on the loss first) and fails loudly if it did not.
"""

from __future__ import annotations

import math

from mimo_ds.errors import RunError


class StepGuard:
    """Counts skipped steps (`guard/skipped_steps`) and aborts after `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int, skipped: int = 0) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = skipped
        self.in_a_row = 0

    def update(self, step: int, parts: dict[str, float], loss_finite: bool, step_skipped: bool) -> dict[str, float]:
        """Judge one step; returns the metrics to log. Raises RunError to abort."""
        if not loss_finite and not step_skipped:
            raise RunError(f"step {step}: the loss is not finite ({_describe(parts)}) but the optimizer applied the "
                           "step; the weights may be corrupted (is gradient clipping or the grad-norm check off?)")
        if step_skipped:
            self.skipped += 1
            self.in_a_row += 1
            if self.in_a_row >= self.max_consecutive:
                raise RunError(f"step {step}: {self.in_a_row} consecutive steps skipped for a non-finite loss or "
                               f"gradient norm (guard.max_consecutive_skips {self.max_consecutive}); last loss parts: "
                               f"{_describe(parts)}")
        else:
            self.in_a_row = 0
        return {"guard/skipped_steps": float(self.skipped)}


def is_finite(parts: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in parts.values())


def _describe(parts: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.6g}" for name, value in parts.items())
