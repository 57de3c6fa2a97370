"""The real DAG through a real SLURM cluster: one node on localhost, started by the test.

Needs Debian's slurm-wlm and munge (`make system-deps`) and root; the SLURM executor plugin
submits every job with sbatch, and each job runs `python -m snakemake` on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from slurm_cluster import missing_binaries, processes_of, single_node_slurm

pytestmark = pytest.mark.slurm
TARGET = Path("results/tiny-gpt-oss/hf")
RELEASE = "results/release/tiny-gpt-oss/hf/f32"  # MaxText targets need their own env
# The run takes 2.5 to 4 minutes on 2 cores (more when other work competes for them).
SNAKEMAKE_TIMEOUT = 420  # seconds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if missing_binaries():
        yield None  # each test fails (not skips) with the message below
        return
    root = tmp_path_factory.mktemp("slurm")
    with single_node_slurm(root) as env:
        yield root, {**os.environ, **env}
    assert not processes_of(root), "daemons of the test cluster still running"


def started(cluster) -> tuple[Path, dict[str, str]]:
    if cluster is None:
        pytest.fail(
            f"SLURM is not installed (missing {', '.join(missing_binaries())}): "
            "run `make system-deps`",
            pytrace=False,
        )
    return cluster


def _env_with_this_python(env: dict[str, str]) -> dict[str, str]:
    # Jobs run `python -m snakemake` found on the PATH sbatch exports: this environment's.
    return {**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]}


def run_snakemake(workdir: Path, env: dict[str, str], *args: str, timeout: int):
    # `timeout -k`: Snakemake ignores a plain SIGTERM while jobs run.
    command = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake"]
    command += ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--profile", str(REPO / "profiles/slurm"), "--jobs", "2", "--latency-wait", "5"]
    # The plugin checks job status first after N seconds, then every N + 10, N + 20, ...
    # seconds until a job ends (N = 40 by default). Each job here takes 10 to 60 s (two
    # Snakemake start-ups, then the step), so N = 15 (checks at 15, 40, 75 s after submission)
    # sees most of them end by the second check.
    # Keep the SLURM logs of successful jobs: the test looks for them.
    # The test cluster is one 2-CPU node: a job asking for the rules' 4 threads would pend
    # forever (SLURM cannot place --cpus-per-task=4 there), so they get the node's 2.
    command += ["--set-threads", *(f"{rule}=2" for rule in ("stage", "export", "parity_report"))]
    command += ["--slurm-init-seconds-before-status-checks", "15", "--slurm-keep-successful-logs"]
    command += [*args, "--configfile", str(REPO / "config.yaml")]
    return subprocess.run(
        command,
        cwd=workdir,
        env=_env_with_this_python(env),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )


def test_default_target_passes_through_slurm(cluster, tmp_path):
    _root, env = started(cluster)
    run = run_snakemake(tmp_path, env, RELEASE, timeout=SNAKEMAKE_TIMEOUT)
    output = run.stdout + run.stderr
    if run.returncode != 0:
        job_logs = sorted((tmp_path / ".snakemake/slurm_logs").rglob("*.log"))
        last_job = job_logs[-1].read_text()[-3000:] if job_logs else "(no SLURM job logs)"
        pytest.fail(
            f"snakemake exited {run.returncode}:\n{output[-5000:]}\n"
            f"--- last SLURM job log ---\n{last_job}",
            pytrace=False,
        )

    report = json.loads((tmp_path / TARGET / "parity/f32/report.json").read_text())
    assert report["status"] == "PASS"
    assert (tmp_path / TARGET / "parity/f32.passed.json").exists()

    # Every rule ran as a SLURM job: one kept log per job, and slurmctld knows them finished.
    logs = {p.parent.parent.name: p for p in (tmp_path / ".snakemake/slurm_logs").rglob("*.log")}
    rules = ("download", "stage", "export", "parity_report", "parity_gate")
    assert {f"rule_{rule}" for rule in rules} <= set(logs), sorted(logs)
    job_ids = {p.stem for p in logs.values()}
    queue = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i %T"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    states = dict(line.split() for line in queue.splitlines())
    assert {states.get(job) for job in job_ids} == {"COMPLETED"}, (job_ids, queue)


def test_gpu_request_is_scheduled_on_the_fake_gpu(cluster, tmp_path):
    """The node declares a gres gpu on a mknod character device: `--gpus=1` gets scheduled."""
    _root, env = started(cluster)
    gres = subprocess.run(
        ["sinfo", "--noheader", "--format=%G"], env=env, capture_output=True, text=True
    ).stdout.strip()
    if "gpu" not in gres:
        pytest.skip("no fake GPU on this node (mknod not permitted)")
    out = tmp_path / "gpu.out"
    command = ["sbatch", "--wait", "--gpus=1", "--mem=100", "--time=1", f"--output={out}"]
    command += ["--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"]
    subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.read_text().strip() == "CUDA_VISIBLE_DEVICES=0"
