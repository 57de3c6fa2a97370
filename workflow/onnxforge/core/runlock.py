"""Snakemake's lock, taken over when the run that left it is gone.

Snakemake locks a working directory with files under ``.snakemake/locks`` that list the files
a run reads and writes, and removes them when it ends. A run killed with SIGKILL (or by a
power cut, or a job scheduler's kill) cannot remove them, and every later run then stops with
"Directory cannot be locked ... --unlock" until someone unlocks by hand. The lock files name
no process, so Snakemake cannot tell a stale lock from a live run's.

So each Snakemake driver started on this workflow records itself, while the Snakefile is read
(before Snakemake takes its lock), in ``.snakemake/onnxforge-drivers/<pid>.json``: host, pid,
the process's start time. When a new driver starts and finds a lock file that no live
recorded driver can hold (none was recorded before the file was written), the lock is stale
and it removes it, so the plain command resumes. A lock that a live driver may hold is never
touched: Snakemake's own check then decides, as always (two runs that would write the same
files still exclude each other; runs on disjoint targets still run side by side).

A record is removed when its driver exits; one left by a killed driver is removed by the next
driver that finds its process gone (same host, and a pid that is not running, or running
since another time). Records from another host (a shared file system) are taken as alive:
that host's next run clears its own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from onnxforge.core import processes

RECORDS = "onnxforge-drivers"
LOCKS = "locks"


def _record_of(pid: int) -> dict:
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "start": processes.start_time(pid),
        "command": " ".join(sys.argv),
    }


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # cannot be checked from here
    return processes.alive(int(record["pid"]), record.get("start"))


def register(persistence: Path = Path(".snakemake")) -> Path:
    """Record this process as a driver on ``persistence``'s directory until it exits."""
    records = Path(persistence) / RECORDS
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{os.getpid()}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_record_of(os.getpid())) + "\n")
    os.replace(tmp, path)

    def unregister(pid: int = os.getpid()) -> None:
        if os.getpid() == pid:  # not in a forked child
            path.unlink(missing_ok=True)

    atexit.register(unregister)
    return path


def live_drivers(persistence: Path = Path(".snakemake")) -> list[tuple[dict, int]]:
    """The other recorded drivers that still run, each with the time it was recorded (ns);
    records of dead ones are removed."""
    records = Path(persistence) / RECORDS
    live = []
    for path in sorted(records.glob("*.json")) if records.exists() else []:
        try:
            record, recorded = json.loads(path.read_text()), path.stat().st_mtime_ns
        except (OSError, ValueError):
            continue  # being written, or gone meanwhile
        if int(record.get("pid", -1)) == os.getpid() and record.get("host") == socket.gethostname():
            continue
        if _alive(record):
            live.append((record, recorded))
        else:
            path.unlink(missing_ok=True)
    return live


def clear_stale_locks(persistence: Path = Path(".snakemake")) -> list[Path]:
    """Remove each of Snakemake's lock files that no live driver can hold; returns them.

    A driver records itself before Snakemake locks, so a lock file can only be held by a
    live driver recorded before the file was written; one recorded later (a run started
    since, a dry run) cannot hold it."""
    locks = Path(persistence) / LOCKS
    found = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    if not found:
        return []
    recorded = [since for _, since in live_drivers(persistence)]
    removed = []
    for lock in found:
        with contextlib.suppress(FileNotFoundError):
            if any(since <= lock.stat().st_mtime_ns for since in recorded):
                continue  # perhaps that driver's
            lock.unlink()
            removed.append(lock)
    return removed


def take_over(persistence: Path = Path(".snakemake")) -> str | None:
    """At a driver's start: record it, then clear a lock that no live driver holds. Returns a
    line to log when a lock was cleared."""
    register(persistence)
    removed = clear_stale_locks(persistence)
    if not removed:
        return None
    return (
        f"onnxforge: removed Snakemake's lock ({len(removed)} file(s) in {removed[0].parent}) "
        "left by a run that no longer runs (killed?); its unfinished jobs rerun"
    )
