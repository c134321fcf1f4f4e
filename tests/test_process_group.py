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


def test_a_stale_shm_build_lock_does_not_hang_the_start(tmp_path: Path):
    # torch's FileBaton waits forever on this file; DeepSpeed's CPU backend would build the shm op under it.
    lock_dir = tmp_path / "ext" / "py311_cpu" / "deepspeed_shm_comm"
    lock_dir.mkdir(parents=True)
    (lock_dir / "lock").touch()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "DS_ACCELERATOR": "cpu", "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "world 1" in done.stdout
    assert (lock_dir / "lock").exists() and not list(lock_dir.glob("*.so"))
