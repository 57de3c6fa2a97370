"""A real single-node SLURM cluster on localhost, entirely inside a temporary folder.

`single_node_slurm(workdir)` writes a slurm.conf and a munge key under `workdir`, starts
munged, slurmctld and slurmd in the foreground as child processes (each with its own paths:
nothing under /etc, /run or /var is used or changed), waits until the node is idle and yields
the environment variables that point the SLURM client commands (sbatch, squeue, scontrol,
...) at this cluster. On exit it cancels whatever jobs are left, stops every daemon it started
and checks that none of them, and no job step of theirs, is still running.

Debian's slurm-wlm 22.05 and munge provide the binaries (`make system-deps`). Everything runs
as the current user, which must be root: slurmd launches jobs as their submitting user.
A fake GPU (a character device made with mknod, declared as gres `gpu:1`) is added where
mknod is allowed, so that `--gpus=1` requests can be scheduled on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
FAKE_GPU_MAJOR = 195  # the NVIDIA character-device major; nothing opens the file


class SlurmError(RuntimeError):
    """The cluster could not be started or stopped cleanly."""


def _search_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), *SBIN])


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=_search_path())


def missing_binaries() -> list[str]:
    """The daemons and client commands this module needs that are not installed."""
    return [name for name in (*DAEMONS, *CLIENTS) if find_binary(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _node_hardware() -> dict[str, str]:
    """CPUs, topology and RealMemory as slurmd itself sees them (`slurmd -C`)."""
    out = subprocess.run(
        [find_binary("slurmd") or "slurmd", "-C"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    first = next(line for line in out.splitlines() if line.startswith("NodeName="))
    fields = dict(item.split("=", 1) for item in first.split())
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    hardware = {key: fields[key] for key in keep if key in fields}
    # A node that reports less memory than configured is drained: stay a little below.
    hardware["RealMemory"] = str(int(int(fields["RealMemory"]) * 0.95))
    return hardware


def _make_fake_gpu(path: Path) -> bool:
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(FAKE_GPU_MAJOR, 0))  # S_IFCHR
    except OSError:
        return False
    return True


def _write_slurm_conf(
    root: Path, sock: Path, node: str, hardware: dict[str, str], gpu: Path | None
) -> Path:
    ports = (_free_port(), _free_port())
    gres = " Gres=gpu:1" if gpu else ""
    node_line = " ".join(f"{k}={v}" for k, v in hardware.items())
    conf = root / "etc/slurm.conf"
    conf.write_text(
        f"""# Written by tests/support/slurm_cluster.py: one node on localhost, no accounting.
ClusterName=onnxforge-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock / "munge.socket"}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={sock / "slurmd"}
SlurmctldPidFile={root / "run/slurmctld.pid"}
SlurmdPidFile={root / "run/slurmd.pid"}
SlurmctldLogFile={root / "log/slurmctld.log"}
SlurmdLogFile={root / "log/slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue this long (the Snakemake plugin's squeue status check).
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
{"GresTypes=gpu" if gpu else ""}
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} {node_line}{gres} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
    )
    if gpu:
        (root / "etc/gres.conf").write_text(f"NodeName={node} Name=gpu File={gpu}\n")
    return conf


def _client_shims(bin_dir: Path, conf: Path) -> str:
    """Client commands that always read `conf`; returns a PATH that finds them first.

    SLURM_CONF alone is not enough: the Snakemake SLURM jobstep plugin (0.6.1) removes every
    SLURM_* variable but the job's identity before it runs `srun` inside a job, and srun
    then looks for /etc/slurm/slurm.conf or DNS SRV records.
    """
    bin_dir.mkdir(exist_ok=True)
    for name in (*CLIENTS, "sacct", "sshare", "sacctmgr"):
        real = find_binary(name)
        if real is None:
            continue
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}"; export SLURM_CONF\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"({path}: {err})"
    return "\n".join(text[-lines:])


def _logs(root: Path) -> str:
    parts = []
    for log in sorted((root / "log").glob("*")):
        parts.append(f"--- {log} ---\n{_tail(log)}")
    return "\n".join(parts)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def processes_of(root: Path) -> dict[int, str]:
    """Live processes belonging to the cluster under `root`: pid -> command line.

    The daemons name their configuration or socket under `root` on their command line; job
    steps (slurmstepd, started by slurmd) carry its SLURM_CONF in their environment.
    """
    root_s = str(root)
    needle = f"SLURM_CONF={root}/".encode()
    found = {}
    for pid in _pids():
        if pid == os.getpid():
            continue
        cmd = _cmdline(pid)
        if not cmd:
            continue
        name = cmd.split()[0].rsplit("/", 1)[-1]
        daemon = name.rstrip(":") in (*DAEMONS, "slurmstepd", "slurmscriptd")
        if daemon and (root_s in cmd or _environ_has(pid, needle)):
            found[pid] = cmd
    return found


def _run(env: dict[str, str], *args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(
        [find_binary(args[0]) or args[0], *args[1:]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_idle(env: dict[str, str], node: str, root: Path, procs: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SlurmError(
                    f"{name} exited with status {proc.returncode} while the cluster started\n"
                    + _logs(root)
                )
        try:
            run = _run(env, "sinfo", "--noheader", "--Node", "--format=%N %t", timeout=10)
            last = (run.stdout + run.stderr).strip()
            if run.returncode == 0 and f"{node} idle" in run.stdout:
                return
        except subprocess.TimeoutExpired:
            last = "sinfo timed out"
        time.sleep(0.5)
    raise SlurmError(
        f"node {node} not idle after {timeout:.0f}s; last sinfo: {last!r}\n" + _logs(root)
    )


def _cancel_jobs(env: dict[str, str], timeout: float = 30) -> None:
    """Cancel every job still queued or running, and wait for their steps to end."""
    try:
        ids = _run(env, "squeue", "--noheader", "--format=%i", timeout=10).stdout.split()
        if ids:
            _run(env, "scancel", *ids, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = _run(
                env, "squeue", "--noheader", "--format=%i", "--states=PD,R,CG,CF,S", timeout=10
            ).stdout.split()
            if not left:
                return
            time.sleep(0.5)
    except subprocess.TimeoutExpired:
        return  # the controller is gone or stuck; the daemons get stopped anyway


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def _kill_leftovers(root: Path, timeout: float = 10) -> dict[int, str]:
    """SIGTERM, then SIGKILL, whatever still belongs to the cluster; returns what remains."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = processes_of(root)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_of(root)
        if not left:
            return {}
    return processes_of(root)


@contextlib.contextmanager
def single_node_slurm(workdir: Path, *, start_timeout: float = 60) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd under `workdir`; yield the client environment.

    The yielded dict holds SLURM_CONF (slurm.conf names the munge socket through AuthInfo)
    and a PATH that starts with wrappers of the client commands that set SLURM_CONF
    themselves (see `_client_shims`); merge it into the environment of any sbatch, squeue,
    scontrol or Snakemake process that should use this cluster.
    """
    missing = missing_binaries()
    if missing:
        raise SlurmError(
            f"SLURM/munge binaries not found: {', '.join(missing)}; run `make system-deps` "
            "(apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        raise SlurmError("a local SLURM cluster needs root (slurmd runs jobs as their user)")

    root = Path(workdir).resolve()
    # Unix socket paths (munge, slurmstepd) must stay under ~108 bytes: keep them short.
    short = len(str(root)) > 48
    sock = Path(tempfile.mkdtemp(prefix="slurm-")) if short else root / "sock"
    for sub in ("etc", "state", "run", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (sock / "slurmd").mkdir(parents=True, exist_ok=True)
    for path in (root, root / "munge", sock):
        path.chmod(0o700)  # munged refuses directories others can write to

    node = socket.gethostname().split(".")[0]
    gpu = root / "dev/nvidia0"
    gpu.parent.mkdir(exist_ok=True)
    has_gpu = gpu.exists() or _make_fake_gpu(gpu)
    conf = _write_slurm_conf(root, sock, node, _node_hardware(), gpu if has_gpu else None)
    key = root / "munge/munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)

    env = {"SLURM_CONF": str(conf), "PATH": _client_shims(root / "bin", conf)}
    daemon_env = {**os.environ, **env}
    commands = {
        "munged": [
            find_binary("munged"),
            "--foreground",
            "--force",
            f"--socket={sock / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={root / 'run/munged.pid'}",
            f"--log-file={root / 'log/munged.log'}",
            f"--seed-file={root / 'munge/munged.seed'}",
        ],
        "slurmctld": [find_binary("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [find_binary("slurmd"), "-D", "-f", str(conf), "-N", node],
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            out = (root / f"log/{name}.out").open("wb")
            procs[name] = subprocess.Popen(
                command,
                env=daemon_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches only the test
            )
            out.close()
            if name == "munged":
                _wait_for_file(sock / "munge.socket", procs[name], root)
        _wait_idle(env, node, root, procs, start_timeout)
        yield env
    finally:
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            _cancel_jobs(env)
        for name in reversed(list(procs)):  # slurmd, slurmctld, then munged
            _stop(procs[name])
        left = _kill_leftovers(root)
        if short:
            shutil.rmtree(sock, ignore_errors=True)
        if left:
            raise SlurmError(f"processes of the test cluster still running: {left}")


def _wait_for_file(path: Path, proc: subprocess.Popen, root: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SlurmError(f"{path} did not appear (exit status {proc.poll()})\n" + _logs(root))
