"""Where a benchmark's JSON goes and what it records about the machine: one place, so every result file in
`benchmarks/results/<host kind>/` names its host the same way and numbers from different runs can be told apart."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def host_kind() -> str:
    """The results folder's name: the GPU model, else `cpu-<N>core`."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def host() -> dict[str, Any]:
    """The machine and the load on it when the result was written (a busy machine explains slow numbers)."""
    import torch

    record = {"kind": host_kind(), "hostname": socket.gethostname(), "cpus": os.cpu_count(),
              "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
              "load_average": list(os.getloadavg())}
    if torch.cuda.is_available():
        record["gpu"] = gpu()
    return record


def gpu() -> dict[str, Any]:
    """The GPU, its driver and the CUDA/Triton versions the numbers were taken with."""
    import subprocess

    import torch

    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
            "driver": smi.stdout.strip() or None, "triton": triton_version}


def write_result(name: str, payload: dict[str, Any], out: Path | None = None, quiet: bool = False) -> Path:
    """Write `payload` with the benchmark's name, the host and the time to `out` (default
    `results/<host kind>/<name>.json`); returns the path. `quiet` for the partial rewrites of a long run."""
    path = out or RESULTS / host_kind() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "host": host(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    path.write_text(json.dumps(record, indent=1) + "\n")
    if not quiet:
        print(f"wrote {path}")
    return path
