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

    return {"kind": host_kind(), "hostname": socket.gethostname(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "load_average": list(os.getloadavg())}


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write `payload` with the benchmark's name, the host and the time to `out` (default
    `results/<host kind>/<name>.json`); returns the path."""
    path = out or RESULTS / host_kind() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "host": host(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path
