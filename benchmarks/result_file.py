"""Where a benchmark's JSON goes and what it records about the machine: one place, so every result file in
`benchmarks/results/<host kind>/` names its host the same way and numbers from different runs can be told apart."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
#: Written here by `benchmarks/gpu/plan.py stamp` (the dry run does it) and carried with the bundle: a lent machine
#: receives the working tree without .git, so the commit travels in this file.
STAMP = ROOT / ".gpu" / "SOURCE.json"


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
              "load_average": list(os.getloadavg()), "source": source()}
    if torch.cuda.is_available():
        record["gpu"] = gpu()
    return record


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def files_digest(files: list[str]) -> str:
    """One sha256 over the named files' paths and contents (a missing file counts as empty): whether the tree a
    result came from is the tree that was stamped."""
    h = hashlib.sha256()
    for name in sorted(files):
        path = ROOT / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return h.hexdigest()


def stamp(path: Path = STAMP) -> dict[str, Any]:
    """Record the commit, the modified tracked files and a digest of every tracked file, for a machine without git."""
    files = (_git("ls-files") or "").split()
    if not files:
        raise SystemExit("stamp: `git ls-files` gave nothing (not a git checkout?)")
    record = {"commit": (_git("rev-parse", "HEAD") or "").strip(), "modified": (_git("diff", "--name-only", "HEAD")
              or "").split(), "files": files, "files_sha256": files_digest(files),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def source() -> dict[str, Any]:
    """The code a result was measured with: `git rev-parse` where git works, else the carried stamp, checked
    against the files actually present (`matches` false: the tree changed after stamping)."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    if commit:
        return {"commit": commit, "modified": (_git("diff", "--name-only", "HEAD") or "").split(), "from": "git"}
    path = Path(os.environ.get("MIMO_SOURCE_STAMP", STAMP))
    if not path.is_file():
        return {"commit": None, "from": f"no git and no stamp at {path}"}
    record = json.loads(path.read_text())
    return {"commit": record["commit"], "modified": record["modified"], "from": f"stamp {record['time']}",
            "matches": files_digest(record["files"]) == record["files_sha256"]}


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
