"""Starting the process group on CPU builds nothing, so a lock left by a killed JIT build cannot hang a start."""

import os
import subprocess
import sys
from pathlib import Path

from ports import free_port

CODE = """
import torch.distributed as dist
from mimo_ds.distributed import init_process_group
init_process_group()
print("world", dist.get_world_size())
"""


def test_a_stale_shm_build_lock_does_not_hang_the_start(tmp_path: Path, monkeypatch):
    # torch's FileBaton waits forever on this file; DeepSpeed's CPU backend would build the shm op under it. The
    # folder is torch's own choice for the op under this TORCH_EXTENSIONS_DIR (it differs from the default cache's).
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    lock_dir = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
    (lock_dir / "lock").touch()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "world 1" in done.stdout
    assert (lock_dir / "lock").exists() and not list(lock_dir.glob("*.so"))
