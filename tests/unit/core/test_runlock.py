"""A lock left by a killed Snakemake driver is cleared; a live driver's is kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import snakemake
from onnxforge.core import processes, runlock


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def record(persistence, pid: int, start: str | None = None) -> None:
    records = persistence / runlock.RECORDS
    records.mkdir(parents=True, exist_ok=True)
    entry = {"pid": pid, "host": os.uname().nodename, "start": start}
    if start is None:
        entry["start"] = processes.start_time(pid)
    (records / f"{pid}.json").write_text(json.dumps(entry))


def lock(persistence, name: str = "0.output.lock"):
    (persistence / runlock.LOCKS).mkdir(parents=True, exist_ok=True)
    path = persistence / runlock.LOCKS / name
    path.write_text("results/x\n")
    return path


def test_a_lock_without_a_live_driver_is_removed(tmp_path):
    persistence = tmp_path / ".snakemake"
    record(persistence, dead_pid())
    stale = lock(persistence)
    assert runlock.clear_stale_locks(persistence) == [stale]
    assert not stale.exists()
    assert not list((persistence / runlock.RECORDS).iterdir())  # the dead driver's record too


def test_a_lock_with_no_record_at_all_is_stale(tmp_path):
    persistence = tmp_path / ".snakemake"
    stale = lock(persistence, "0.input.lock")
    assert runlock.clear_stale_locks(persistence) == [stale]


def test_a_live_driver_recorded_before_the_lock_keeps_it(tmp_path, live_process):
    persistence = tmp_path / ".snakemake"
    record(persistence, live_process)
    time.sleep(0.01)
    held = lock(persistence)
    assert runlock.clear_stale_locks(persistence) == []
    assert held.exists()


def test_a_driver_recorded_after_the_lock_cannot_hold_it(tmp_path, live_process):
    """A run (or a dry run) started after a killed run's lock was written is not its owner."""
    persistence = tmp_path / ".snakemake"
    stale = lock(persistence)
    time.sleep(0.01)
    record(persistence, live_process)
    assert runlock.clear_stale_locks(persistence) == [stale]


def test_a_reused_pid_is_not_the_driver(tmp_path, live_process):
    """Same pid, another start time: the recorded driver is gone."""
    persistence = tmp_path / ".snakemake"
    record(persistence, live_process, start="1")
    stale = lock(persistence)
    assert runlock.clear_stale_locks(persistence) == [stale]


def test_take_over_records_this_driver(tmp_path):
    persistence = tmp_path / ".snakemake"
    lock(persistence)
    message = runlock.take_over(persistence)
    assert message and "removed Snakemake's lock" in message
    mine = json.loads((persistence / runlock.RECORDS / f"{os.getpid()}.json").read_text())
    assert mine["pid"] == os.getpid() and mine["start"] == processes.start_time(os.getpid())


RELEASE = "results/release/tiny-gpt-oss/hf/f32"


def unpromoted_copy(registry_build, tmp_path):
    """The registry's build without the tiny target's release: promote has to run (Snakemake
    checks its lock against the files it is about to write)."""
    workdir = tmp_path / "work"
    shutil.copytree(registry_build, workdir, symlinks=True)
    shutil.rmtree(workdir / RELEASE)
    return workdir, workdir / ".snakemake"


@pytest.mark.dag
def test_plain_rerun_after_a_killed_driver_needs_no_unlock(registry_build, tmp_path):
    """Snakemake's lock as a driver killed with SIGKILL leaves it: the plain command runs."""
    workdir, persistence = unpromoted_copy(registry_build, tmp_path)
    record(persistence, dead_pid())
    time.sleep(0.01)
    lock(persistence, "0.input.lock").write_text(f"{RELEASE}\n")
    lock(persistence, "0.output.lock").write_text(f"{RELEASE}\n")
    run = snakemake(workdir, RELEASE)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "removed Snakemake's lock" in run.stdout + run.stderr
    assert (workdir / RELEASE / "manifest.json").exists()


@pytest.mark.dag
def test_a_live_drivers_lock_still_excludes_a_second_run(registry_build, tmp_path, live_process):
    workdir, persistence = unpromoted_copy(registry_build, tmp_path)
    record(persistence, live_process)
    time.sleep(0.01)
    lock(persistence, "0.output.lock").write_text(f"{RELEASE}\n")
    run = snakemake(workdir, RELEASE)
    assert run.returncode != 0
    assert "cannot be locked" in run.stdout + run.stderr
