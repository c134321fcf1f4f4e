"""The Slurm launchers: the dry run without Slurm, and real jobs on a one-node Slurm cluster on localhost.

The cluster is Debian's slurmctld/slurmd/munge, installed here when missing (root and apt-get needed, else the
cluster tests are skipped saying so), configured in a private folder with its own ports and munge socket, and
stopped by pid at the end. The jobs run the tiny recipes on CPU with 2 srun tasks (gloo), one after the other.
"""

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from corpus import make_pairs, make_rows
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
STAGE1, STAGE2 = ROOT / "slurm" / "stage1.sh", ROOT / "slurm" / "stage2.sh"
CACHE = ROOT / "slurm" / "teacher_cache.sh"
TINY = ROOT / "recipes" / "tiny"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel", "sinfo"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Slurm job or MLflow store it may run under."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "MIMO_")) and k != "MLFLOW_TRACKING_URI"}
    env.update(MIMO_PYTHON=sys.executable, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------------------------
# The dry run: no Slurm at all (any Slurm command it called would fail the test).


@pytest.fixture
def no_slurm(tmp_path) -> dict[str, str]:
    """An environment whose Slurm commands record that they were called and fail."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    for name in ("srun", "sbatch", "scontrol", "squeue", "scancel", "sinfo"):
        script = fake / name
        script.write_text(f"#!/bin/sh\necho {name} >> {tmp_path / 'slurm-called'}\nexit 97\n")
        script.chmod(0o755)
    return _clean_env(PATH=f"{fake}:{os.environ['PATH']}")


def _dry_run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def _plan(stdout: str) -> dict[int, tuple[int, str, dict[str, str], list[str]]]:
    """rank → (node, host, environment, command) from a dry run's 'node N (host):' and 'rank R: env ...' lines."""
    ranks, node, host = {}, None, None
    for line in stdout.splitlines():
        if m := re.fullmatch(r"node (\d+) \((\S+)\):", line):
            node, host = int(m[1]), m[2]
        elif m := re.fullmatch(r"  rank (\d+): (.*)", line):
            words = shlex.split(m[2])
            assert words[0] == "env", line
            pairs = [w for w in words[1:] if re.fullmatch(r"[A-Z_]+=.*", w)]
            env = dict(p.split("=", 1) for p in pairs)
            assert int(m[1]) not in ranks, f"rank {m[1]} printed twice"
            ranks[int(m[1])] = (node, host, env, words[1 + len(pairs):])
    return ranks


def test_dry_run_two_nodes_of_eight_gpus_needs_no_slurm(no_slurm, tmp_path):
    job_id = random.randrange(1, 10**7)
    proc = _dry_run(STAGE2, no_slurm, "--nodes", "2", "--gpus-per-node", "8", "--job-id", str(job_id))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "slurm-called").exists(), "the dry run called a Slurm command"

    plan = _plan(proc.stdout)
    assert sorted(plan) == list(range(16))
    envs = [env for _, _, env, _ in plan.values()]
    assert {env["WORLD_SIZE"] for env in envs} == {"16"}
    assert sorted(int(env["RANK"]) for env in envs) == list(range(16))
    for node in (0, 1):
        on_node = [env for n, _, env, _ in plan.values() if n == node]
        assert sorted(int(env["LOCAL_RANK"]) for env in on_node) == list(range(8))
        assert {env["NODE_RANK"] for env in on_node} == {str(node)}
        assert {env["LOCAL_WORLD_SIZE"] for env in on_node} == {"8"}
    hosts = {n: h for n, h, _, _ in plan.values()}
    assert len(set(hosts.values())) == 2
    assert {env["MASTER_ADDR"] for env in envs} == {hosts[0]}  # one master: the first node
    assert {env["MASTER_PORT"] for env in envs} == {str(10000 + job_id % 50000)}  # docs/cluster.md's formula
    assert {env["DS_ACCELERATOR"] for env in envs} == {"cuda"}  # GPUs: NCCL
    commands = {tuple(cmd) for _, _, _, cmd in plan.values()}
    assert len(commands) == 1  # every rank runs the same command; only the environment differs
    command = list(commands.pop())
    assert command[:3] == [sys.executable, "-m", "mimo_ds.train"]
    assert list(command[-2:]) == ["--resume", "auto"]
    assert command[command.index("--config") + 1] == str(ROOT / "recipes" / "stage2_mimo.yaml")

    other = _dry_run(STAGE2, no_slurm, "--nodes", "2", "--gpus-per-node", "8", "--job-id", str(job_id + 1))
    ports = {env["MASTER_PORT"] for _, _, env, _ in _plan(other.stdout).values()}
    assert ports == {str(10000 + (job_id + 1) % 50000)}


def test_dry_run_on_cpu_nodes_uses_gloo_and_passes_overrides(no_slurm, tmp_path):
    nodes, tasks = random.randint(1, 3), random.randint(1, 5)
    proc = _dry_run(STAGE2, no_slurm, "--recipe", "recipes/tiny/stage2_mimo.yaml", "--nodes", str(nodes),
                    "--gpus-per-node", "0", "--ntasks-per-node", str(tasks), "--hosts",
                    ",".join(f"cpu-{i:02d}" for i in range(nodes)), "--init-from", str(tmp_path / "s1"),
                    "--set", "student.random_init=", "--set", "optim.lr=3e-4", "--set", "tracking.enabled=true",
                    "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    plan = _plan(proc.stdout)
    assert sorted(plan) == list(range(nodes * tasks))
    assert {h for _, h, _, _ in plan.values()} == {f"cpu-{i:02d}" for i in range(nodes)}
    _, _, env, command = plan[0]
    assert env["DS_ACCELERATOR"] == "cpu" and env["MASTER_ADDR"] == "cpu-00"
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # beside the output folder
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    assert sets == [f"init_from={tmp_path / 's1'}", "student.random_init=", "optim.lr=3e-4",
                    "tracking.enabled=true", f"output_dir={tmp_path / 'out'}"]
    assert f"init_from   {tmp_path / 's1'}" in proc.stdout


def test_dry_runs_from_anywhere_chain_stage1_output_into_stage2_inside_the_checkout(no_slurm, tmp_path):
    """output_dir resolves against the recipe like init_from (issue 20): from any submit folder, stage 1 writes into
    the checkout's runs/stage1, which is where stage 2 reads."""
    plans = [subprocess.run(["bash", str(script), "--dry-run", "--nodes", "1"], env=no_slurm, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path) for script in (STAGE1, STAGE2)]
    assert [p.returncode for p in plans] == [0, 0], plans[0].stderr + plans[1].stderr
    assert f"output_dir  {ROOT / 'runs' / 'stage1'}\n" in plans[0].stdout
    assert f"init_from   {ROOT / 'runs' / 'stage1'}\n" in plans[1].stdout
    assert f"output_dir  {ROOT / 'runs' / 'stage2_mimo'}\n" in plans[1].stdout


@pytest.mark.parametrize("args, message", [
    (["--recipe", "recipes/tiny/stage2_mimo.yaml"], "stage-2 recipe; submit it with slurm/stage2.sh"),
    (["--set", "optim.lrr=1"], "optim.lrr"),
    (["--set", "optim.lr"], "--set expects KEY=VALUE"),
    (["--init-from", "x"], "--init-from is for stage 2"),
    (["--recipe", "nowhere.yaml"], "recipe not found: nowhere.yaml"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_bad_arguments_exit_2_naming_the_problem(no_slurm, tmp_path, args, message):
    proc = _dry_run(STAGE1, no_slurm, "--nodes", "1", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_outside_slurm_without_dry_run_refuses(no_slurm):
    proc = subprocess.run(["bash", str(STAGE1)], env=no_slurm, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "sbatch" in proc.stderr
    proc = subprocess.run(["bash", str(STAGE1), "--nodes", "2"], env=no_slurm, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


def test_teacher_cache_dry_run_shows_every_ranks_slice(no_slurm, tmp_path):
    """3 CPU tasks on each of 2 nodes over 37 rows in parts of 10: every rank's command, and slices that tile the
    write positions in rank order, on part boundaries (the ranks beyond the 4 parts get none)."""
    rows = make_rows(tmp_path / "rows", n=37, shard_size=8)
    proc = _dry_run(CACHE, no_slurm, "--recipe", "recipes/tiny/stage2_mimo.yaml", "--set", f"data.train={rows}",
                    "--nodes", "2", "--gpus-per-node", "0", "--ntasks-per-node", "3", "--window", "5",
                    "--part-size", "10", "--out", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "slurm-called").exists(), "the dry run called a Slurm command"
    plan = _plan(proc.stdout)
    assert sorted(plan) == list(range(6))
    for rank, (_, _, env, command) in plan.items():
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "6"
        assert command[:4] == [sys.executable, "-m", "mimo_ds.cli", "teacher-cache"]
        assert command[command.index("--out") + 1] == str(tmp_path / "cache")
    slices = re.findall(r"^    slice: (.*)$", proc.stdout, re.M)
    assert len(slices) == 6
    covered = []
    for text in slices:
        if m := re.fullmatch(r"parts? .*, write positions (\d+)\.\.(\d+) \((\d+) records\)", text):
            start, last = int(m[1]), int(m[2])
            assert start % 10 == 0 and int(m[3]) == last - start + 1
            covered += range(start, last + 1)
        else:
            assert text.startswith("no part"), text
    assert covered == list(range(37))
    assert f"cache       {tmp_path / 'cache'} " in proc.stdout
    refused = _dry_run(CACHE, no_slurm, "--recipe", "recipes/tiny/stage2_mimo.yaml", "--set", f"data.train={rows}",
                       "--nodes", "1", "--window", "3", "--part-size", "10")
    assert refused.returncode == 2 and "must be a multiple of the window" in refused.stderr


def test_dry_run_takes_the_tracking_store_as_the_trainer_does(no_slurm, tmp_path):
    """MLFLOW_TRACKING_URI of the submitting shell beats the Slurm default and reaches the ranks untouched; the
    recipe's tracking_uri beats both."""
    env = {**no_slurm, "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    proc = _dry_run(STAGE1, env, "--nodes", "1", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "tracking    http://mlflow.example:5000 (MLFLOW_TRACKING_URI)\n" in proc.stdout
    assert all("MLFLOW_TRACKING_URI" not in rank_env for _, _, rank_env, _ in _plan(proc.stdout).values())
    proc = _dry_run(STAGE1, env, "--nodes", "1", "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'r.db'}")
    assert proc.returncode == 0, proc.stderr
    assert f"tracking    sqlite:///{tmp_path / 'r.db'} (the recipe's tracking.tracking_uri)\n" in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# A real one-node cluster on localhost.


def _install_slurm() -> None:
    """Debian's packages when a daemon is missing; skip (saying why) only without root or without apt-get."""
    if all(shutil.which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not installed and installing it (apt-get) needs root")
    if not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and this machine has no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


class Cluster:
    """slurmctld + slurmd + a private munged, all on 127.0.0.1, configured and stopped by this object."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        try:
            socket.gethostbyname(self.host)
        except OSError:
            self.host = "localhost"
        self.conf = base / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.munge_pid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        return _clean_env(SLURM_CONF=str(self.conf))

    def start(self) -> None:
        munge = self.base / "munge"
        munge.mkdir(mode=0o755)
        shutil.copy("/etc/munge/munge.key", munge / "key")
        shutil.chown(munge, "munge", "munge")
        shutil.chown(munge / "key", "munge", "munge")
        (munge / "key").chmod(0o600)
        socket_path = munge / "socket"
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={socket_path}",
                        f"--key-file={munge / 'key'}", f"--pid-file={munge / 'pid'}",
                        f"--log-file={munge / 'log'}", f"--seed-file={munge / 'seed'}"], check=True, timeout=60)
        self.munge_pid = int((munge / "pid").read_text())
        for d in ("state", "spool", "log"):
            (self.base / d).mkdir()
        cpus = max(2, os.cpu_count() or 2)
        self.conf.write_text(f"""\
ClusterName=mimotest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthInfo=socket={socket_path},cred_expire=10
SlurmUser=root
StateSaveLocation={self.base / 'state'}
SlurmdSpoolDir={self.base / 'spool'}
SlurmctldPidFile={self.base / 'slurmctld.pid'}
SlurmdPidFile={self.base / 'slurmd.pid'}
SlurmctldLogFile={self.base / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.base / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        for cmd in (["slurmctld", "-D", "-c", "-f", str(self.conf)],
                    ["slurmd", "-D", "-f", str(self.conf), "-N", self.host]):
            log = open(self.base / "log" / f"{cmd[0]}.out", "w")
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env))
            log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise AssertionError(f"the node never became idle:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.base / "log").glob("*")))

    def stop(self) -> None:
        """Cancel what is left, then end the daemons this object started, by pid."""
        if self.procs:
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True).stdout
            for job in jobs.split():
                subprocess.run(["scancel", job], env=self.env, capture_output=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h"], env=self.env, capture_output=True, text=True).stdout.strip():
                time.sleep(0.5)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.munge_pid is not None:
            os.kill(self.munge_pid, signal.SIGTERM)

    def sbatch(self, script: Path, *args: str, sbatch_args: tuple[str, ...] = (), env: dict | None = None) -> str:
        cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
               "--time=20", f"--output={self.base}/%x-%j.out", *sbatch_args, str(script), *args]
        proc = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=60, cwd=self.base)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True,
                             timeout=60).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def log(self, job_id: str) -> str:
        path = self.base / f"{self.job(job_id)['JobName']}-{job_id}.out"
        return path.read_text() if path.exists() else "(no log)"

    def wait(self, job_id: str, timeout: float = 900) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not end in {timeout}s: {self.job(job_id)}\n{self.log(job_id)}")

    def assert_completed(self, job_id: str, restarts: int = 0) -> None:
        info = self.job(job_id)
        assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), \
            f"job {job_id}: {info}\n{self.log(job_id)[-6000:]}\n{self.logs()}"


@pytest.fixture(scope="module")
def cluster():
    _install_slurm()
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their user and needs root here; this test starts its daemons itself")
    base = Path(tempfile.mkdtemp(prefix="mimo-slurm-", dir="/tmp"))
    base.chmod(0o755)  # munged requires every folder above its socket to be searchable by all
    c = Cluster(base)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slurm-data")
    return {"pairs": make_pairs(root / "pairs", n=64), "rows": make_rows(root / "rows", n=ROWS)}


ROWS, EPOCHS, WORLD = 96, 6, 2
STEPS = EPOCHS * ROWS // (WORLD * 12)  # the tiny stage 2 takes 12 rows per rank and step: 4 steps hold every row


def _runs(db: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # past the suite's 600 s: a fresh machine installs Slurm, the chain runs 3 launches
def test_dry_run_inside_a_job_prints_the_allocation_and_starts_nothing(cluster, data, tmp_path):
    out = tmp_path / "runs" / "stage1"
    env = {**cluster.env, "MIMO_DRY_RUN": "1"}
    job = cluster.sbatch(STAGE1, "--recipe", str(TINY / "stage1.yaml"), "--output-dir", str(out), env=env)
    cluster.wait(job)
    cluster.assert_completed(job)
    plan = _plan(cluster.log(job))
    assert sorted(plan) == [0, 1] and {h for _, h, _, _ in plan.values()} == {cluster.host}
    assert {env["MASTER_PORT"] for _, _, env, _ in plan.values()} == {str(10000 + int(job) % 50000)}
    assert {env["DS_ACCELERATOR"] for _, _, env, _ in plan.values()} == {"cpu"}  # no GPU on this node: gloo
    assert not out.exists()


def _fake_trainer(folder: Path, status: int, config_delay: float = 0.0) -> Path:
    """A MIMO_PYTHON that runs the launcher's config check with the real Python (after a delay) and stands in for
    the trainer on every rank: it records the rank and exits with `status`."""
    script = folder / "fake-python"
    script.write_text(f"""#!/bin/bash
if [[ $1 == - ]]; then sleep {config_delay}; exec {sys.executable} "$@"; fi
echo "fake rank $RANK of $WORLD_SIZE restart ${{SLURM_RESTART_COUNT:-0}}" >> {folder / 'ranks.log'}
exit {status}
""")
    script.chmod(0o755)
    return script


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh machine installs Slurm first
def test_a_failed_trainer_is_not_requeued(cluster, tmp_path):
    fake = _fake_trainer(tmp_path, status=3)
    job = cluster.sbatch(STAGE1, "--recipe", str(TINY / "stage1.yaml"), env={**cluster.env, "MIMO_PYTHON": str(fake)})
    info = cluster.wait(job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "3:0", "0"), cluster.log(job)
    assert "the trainer failed with status 3: not requeued" in cluster.log(job)
    assert sorted((tmp_path / "ranks.log").read_text().splitlines()) == ["fake rank 0 of 2 restart 0",
                                                                         "fake rank 1 of 2 restart 0"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh machine installs Slurm first
def test_a_signal_before_the_ranks_start_requeues_without_starting_them(cluster, tmp_path):
    fake = _fake_trainer(tmp_path, status=0, config_delay=10)
    job = cluster.sbatch(STAGE1, "--recipe", str(TINY / "stage1.yaml"), env={**cluster.env, "MIMO_PYTHON": str(fake)})
    deadline = time.monotonic() + 300
    while cluster.job(job)["JobState"] != "RUNNING":
        assert time.monotonic() < deadline, cluster.job(job)
        time.sleep(0.2)
    time.sleep(1)  # inside the 10 s config check
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster.env, check=True, timeout=60)
    cluster.wait(job)
    cluster.assert_completed(job, restarts=1)
    assert "got SIGUSR1 before the ranks started: requeueing without starting them" in cluster.log(job)
    assert sorted((tmp_path / "ranks.log").read_text().splitlines()) == ["fake rank 0 of 2 restart 1",
                                                                         "fake rank 1 of 2 restart 1"]


@pytest.fixture(scope="module")
def chain(cluster, data, tmp_path_factory) -> dict:
    """`sbatch slurm/stage1.sh`, then `sbatch --dependency=afterok:<stage 1> slurm/stage2.sh`, whose job is sent
    SIGUSR1 (`scancel --signal=USR1 --batch`, as Slurm's --signal=B:USR1@T does) after its third step."""
    root = tmp_path_factory.mktemp("chain")
    runs = root / "runs"
    s1_out, s2_out = runs / "stage1", runs / "stage2_mimo"
    s1 = cluster.sbatch(STAGE1, "--recipe", str(TINY / "stage1.yaml"), "--output-dir", str(s1_out),
                        "--set", f"data.train={data['pairs']}", "--set", "max_steps=3", "--set", "epochs=10",
                        "--set", "tracking.enabled=true")
    # A stage-2 recipe naming stage 1's output in init_from, as recipes/stage2_mimo.yaml does.
    recipe = yaml.safe_load((TINY / "stage2_mimo.yaml").read_text())
    del recipe["student"]["random_init"], recipe["max_steps"]
    recipe.update(init_from=str(s1_out), output_dir=str(s2_out), deepspeed=str(ROOT / "ds_configs" / "zero3.json"),
                  epochs=EPOCHS, tracking={"enabled": True})
    recipe["data"].update(train=str(data["rows"]), audit=True, num_workers=2)
    recipe_path = root / "stage2.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    s2 = cluster.sbatch(STAGE2, "--recipe", str(recipe_path), sbatch_args=(f"--dependency=afterok:{s1}",))

    trail = s2_out / "audit" / "rank0.jsonl"
    deadline = time.monotonic() + 900
    while not (trail.exists() and len(trail.read_text().splitlines()) >= 3):
        for job in (s1, s2):
            state = cluster.job(job)["JobState"]
            assert state in ("PENDING", "RUNNING", "COMPLETED") and time.monotonic() < deadline, \
                f"job {job}: {cluster.job(job)}\n{cluster.log(job)[-6000:]}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", s2], env=cluster.env, check=True, timeout=60)
    cluster.wait(s1)
    cluster.wait(s2)
    return {"s1": s1, "s2": s2, "runs": runs, "s1_out": s1_out, "s2_out": s2_out}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh machine installs Slurm first
def test_stage1_then_stage2_chained_with_afterok(cluster, chain):
    s1, s2, s1_out = chain["s1"], chain["s2"], chain["s1_out"]
    cluster.assert_completed(s1)
    cluster.assert_completed(s2, restarts=1)
    assert cluster.job(s2)["StartTime"] >= cluster.job(s1)["EndTime"]
    assert f"init_from   {s1_out}" in cluster.log(s2)
    for out in (s1_out, chain["s2_out"]):
        assert (out / "student" / "modules.json").is_file() and (out / "projection.safetensors").is_file()

    all_runs = _runs(chain["runs"] / "mlflow.db")  # the Slurm default store: beside the output folders
    runs_by_stage = {r.data.tags["mimo.stage"]: r for r in all_runs}
    assert len(all_runs) == 2 and sorted(runs_by_stage) == ["1", "2"]
    stage1_run = json.loads((s1_out / "mimo_ds_student.json").read_text())["run_id"]
    assert runs_by_stage["1"].info.run_id == stage1_run
    assert runs_by_stage["2"].data.tags["mimo.parent_run"] == stage1_run  # stage 2 started from stage 1's output
    for run in runs_by_stage.values():
        assert run.info.status == "FINISHED" and run.data.params["world_size"] == str(WORLD)  # srun tasks: one world


def _audit(out: Path) -> tuple[dict[int, list[int]], dict[int, Counter]]:
    """rank → the steps of its trail; epoch → how often each sample id was trained on, over all ranks."""
    steps, per_epoch = {}, {}
    for rank in range(WORLD):
        lines = [json.loads(line) for line in (out / "audit" / f"rank{rank}.jsonl").read_text().splitlines()]
        steps[rank] = [entry["step"] for entry in lines]
        for entry in lines:
            per_epoch.setdefault(entry["epoch"], Counter()).update(entry["ids"])
    return steps, per_epoch


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh machine installs Slurm first
def test_usr1_checkpoints_requeues_resumes_and_completes(cluster, chain):
    s2, out = chain["s2"], chain["s2_out"]
    cluster.assert_completed(s2, restarts=1)
    log = cluster.log(s2)
    stopped = re.search(r"preempted: the ranks checkpointed \(step_(\d+) in ", log)
    assert stopped and "requeued job" in log and "(restart 1)" in log, log[-6000:]
    assert 3 <= int(stopped[1]) < STEPS, f"stopped at step {stopped[1]} of {STEPS}"

    steps, per_epoch = _audit(out)
    assert steps == {rank: list(range(1, STEPS + 1)) for rank in range(WORLD)}
    every_row = Counter(f"row-{i:05d}" for i in range(ROWS))
    assert len(per_epoch) == EPOCHS and all(seen == every_row for seen in per_epoch.values())

    (run,) = [r for r in _runs(chain["runs"] / "mlflow.db") if r.data.tags["mimo.stage"] == "2"]
    assert run.info.status == "FINISHED" and run.data.tags["mimo.resumes"] == "1"  # one MLflow run across the requeue
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss/total" in line]
    assert logged == list(range(1, STEPS + 1))
