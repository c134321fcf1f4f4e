"""MIMO with a non-finite loss injected, to test the numerical guard through the real entry point.

`objective.nan_steps` lists the optimizer steps (1-based) whose loss is NaN on `objective.nan_rank` (the other
ranks compute the true loss); `nan_steps: [-1]` means every step. Run as `python nan_objective.py <train args>`.
"""

from __future__ import annotations

import sys
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field

from mimo_ds.batch import Embedded
from mimo_ds.objectives import LossOutput
from mimo_ds.objectives.mimo import Mimo, MimoSettings


class NanMimoSettings(MimoSettings):
    kind: Literal["nan_mimo"]  # type: ignore[assignment]
    nan_steps: list[int] = Field(default_factory=list)
    nan_rank: int = 0


class NanMimo(Mimo):
    kind = "nan_mimo"
    Settings = NanMimoSettings

    def __init__(self, settings: NanMimoSettings) -> None:
        super().__init__(settings)
        self.calls = 0  # one call per optimizer step (grad_accum 1, cached or not)

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        out = super().__call__(student, teacher)
        self.calls += 1
        s = self.settings
        if dist.get_rank() == s.nan_rank and (self.calls in s.nan_steps or s.nan_steps == [-1]):
            out = LossOutput(out.loss * float("nan"), {**out.parts, "infonce": out.parts["infonce"] * float("nan")})
        return out


if __name__ == "__main__":
    from mimo_ds.train import main

    sys.exit(main(sys.argv[1:]))
