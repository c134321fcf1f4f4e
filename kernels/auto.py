"""`backend="auto"`: per call, the fastest InfoNCE path that fits a memory budget, from crossovers measured per device.

Three paths compute the same loss:
- "eager": the materialised formula (scores M×N in the input dtype, then fp32 logits, `F.cross_entropy`), autograd
  for the gradients. Fastest at small sizes (one GEMM, few launches), but it holds about a dozen bytes per score.
- "compile": the same function under `torch.compile(dynamic=True)` (one compile for all shapes): fewer passes over
  the M×N matrix, a third of eager's memory; it wins at mid sizes on the H100 where it fits.
- "fused": the backend that never materialises M×N (Triton on CUDA, the chunked PyTorch path elsewhere).

Which one is fastest depends on the device and the size, so it is read from measurements: `crossovers.json` holds,
per device name (`torch.cuda.get_device_name`), the forward+backward times of the three paths at measured (M, N, d)
points and the extra bytes per score eager and compile took (`benchmarks/crossovers.py` writes it from a
`benchmarks/infonce.py` result file). A call takes the measured point of the nearest d and the nearest score count
M·N (in log scale) and, among the paths measured there whose predicted extra memory (bytes per score × scores)
fits the budget, the fastest; "fused" is the fallback that always fits. A GPU without measurements gets the
conservative rule: eager while the scores are few (`DEFAULT_EAGER_MAX_SCORES`) and fit the budget, else fused;
compile is never chosen unmeasured (its first call compiles for seconds). The CPU keeps the chunked path (what
every CPU run so far trained with, so CPU results do not move), unless a table is given for it.

Budget: `memory_budget` bytes when given; else half of what the device has free now (the driver's free memory plus
what torch's allocator holds unused), and a fixed CPU_BUDGET on the CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

TABLE = Path(__file__).with_name("crossovers.json")
PATHS = ("eager", "compile", "fused")
#: Unmeasured devices: eager up to 2048 × 16384 scores (the largest size at which eager beat both others on the H100
#: at d = 384 and 1024), fused beyond.
DEFAULT_EAGER_MAX_SCORES = 2048 * 16384
#: Extra bytes per score of the materialised paths where no measurement says otherwise (eager on the H100: 12).
DEFAULT_BYTES_PER_SCORE = {"eager": 12.0, "compile": 4.0}
CPU_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Point:
    """One measured size: forward+backward milliseconds of each path that ran there (absent: out of memory or not
    run)."""

    m: int
    n: int
    d: int
    ms: dict[str, float]


@dataclass(frozen=True)
class DeviceTable:
    device: str
    points: tuple[Point, ...]
    bytes_per_score: dict[str, float]
    source: str


def parse_table(record: dict) -> dict[str, DeviceTable]:
    """The JSON's `devices` mapping (see crossovers.json) as DeviceTables; a malformed entry is named."""
    tables = {}
    for name, entry in record.get("devices", {}).items():
        try:
            points = tuple(Point(int(p["M"]), int(p["N"]), int(p["d"]),
                                 {path: float(p[f"{path}_ms"]) for path in PATHS if p.get(f"{path}_ms") is not None})
                           for p in entry["points"])
            tables[name] = DeviceTable(name, points, {k: float(v) for k, v in entry["bytes_per_score"].items()},
                                       entry.get("source", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"crossover table entry {name!r} is malformed: {err!r}") from err
    return tables


@lru_cache(maxsize=1)
def load_table(path: Path = TABLE) -> dict[str, DeviceTable]:
    """The committed crossovers, read once per process (empty when the file is absent)."""
    return parse_table(json.loads(path.read_text())) if path.is_file() else {}


def _nearest(points: tuple[Point, ...], m: int, n: int, d: int) -> Point:
    """The measured point of the nearest d, then of the nearest score count, both in log scale."""
    def distance(p: Point) -> tuple[float, float]:
        return abs(math.log(p.d / d)), abs(math.log((p.m * p.n) / max(1, m * n)))

    return min(points, key=distance)


def choose(m: int, n: int, d: int, *, budget: float, table: DeviceTable | None, symmetric: bool = False,
           compile_ok: bool = True, eager_max_scores: int = DEFAULT_EAGER_MAX_SCORES) -> tuple[str, str]:
    """(path, why) for an M×N problem of width d within `budget` extra bytes; `symmetric` adds the M×M direction;
    without a table, eager up to `eager_max_scores` scores (0: always fused)."""
    scores = m * n + (m * m if symmetric else 0)
    per_score = table.bytes_per_score if table else DEFAULT_BYTES_PER_SCORE
    fits = {path: per_score.get(path, math.inf) * scores <= budget for path in ("eager", "compile")}
    fits["fused"] = True
    if table is None or not table.points:
        if scores <= eager_max_scores and fits["eager"]:
            return "eager", f"no measurements for this device: eager up to {eager_max_scores} scores"
        return "fused", (f"no measurements for this device: eager only up to {eager_max_scores} scores within "
                         "the budget, fused otherwise")
    point = _nearest(table.points, m, n, d)
    usable = {path: ms for path, ms in point.ms.items() if fits[path] and (compile_ok or path != "compile")}
    usable.setdefault("fused", math.inf)  # the fallback, whether or not it was timed there
    path = min(usable, key=usable.get)
    return path, (f"{table.device}: fastest within {budget / 2**20:.0f} MiB at the measured point "
                  f"{point.m}x{point.n}, d={point.d} ({', '.join(f'{k} {v:.2f} ms' for k, v in point.ms.items())})")


def default_budget(device: torch.device) -> float:
    """Half of the device memory free now (driver-free plus allocator-cached-but-unused); CPU_BUDGET on the CPU."""
    if device.type != "cuda":
        return CPU_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return 0.5 * (free + cached)


def device_table(device: torch.device) -> DeviceTable | None:
    if device.type != "cuda":
        return None
    return load_table().get(torch.cuda.get_device_name(device))


# -- the materialised paths -------------------------------------------------------------------------------------------
def _direction(q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, margin: float | None) -> Tensor:
    """Per-row loss of q against all k, logits in fp32 (fp64 for fp64 inputs). On CUDA the scores come out of the
    GEMM in the input dtype (tensor cores for bf16): bf16 scores carry 8 bits, so at scale 20 a logit is off by up to
    20·2⁻⁹ ≈ 0.04 and a margin mask can flip for a negative within ~0.002 of its threshold (the fused path's scores
    are fp32), the rounding a bf16-autocast peer has too. The CPU has no fast 16-bit GEMM: it up-casts first."""
    if q.is_cuda or q.dtype in (torch.float32, torch.float64):
        raw = q @ k.T
        raw = raw if raw.dtype == torch.float64 else raw.float()
    else:
        raw = q.float() @ k.float().T
    logits = raw * scale
    if margin is not None:
        cols = torch.arange(k.shape[0], device=k.device)
        positive = raw.detach().gather(1, labels[:, None])
        drop = (raw.detach() > positive + margin) & (cols[None, :] != labels[:, None])
        logits = logits.masked_fill(drop, float("-inf"))
    return F.cross_entropy(logits, labels, reduction="none")


def materialised(q: Tensor, k: Tensor, scale: Tensor, labels: Tensor, rows: Tensor, margin: float | None,
                 symmetric: bool) -> Tensor:
    """Per-row loss [M] fp32 by the materialised formula (the "eager" path; "compile" compiles this function)."""
    loss = _direction(q, k, scale, labels, margin)
    if symmetric:
        loss = 0.5 * (loss + _direction(k.index_select(0, labels), q, scale, rows, margin))
    return loss


@lru_cache(maxsize=1)
def compiled():
    """`materialised` under torch.compile, built on first use (dynamic shapes: one compile serves every size)."""
    return torch.compile(materialised, dynamic=True)
