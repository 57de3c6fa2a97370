"""Is a process still running? For leftovers (Snakemake's lock, a step's ``.tmp-<pid>``) whose
owner may have been killed: only a live owner's are kept.

A pid alone can be reused by an unrelated process once its owner is gone; where ``/proc``
exists a process is also named by its start time (clock ticks since boot), so a reused pid is
not mistaken for the owner.
"""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time (``/proc/<pid>/stat`` field 22), or None where it cannot be
    read (no such process, no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not); with ``start``, whether it is the same
    process that had that start time."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    state = _state(pid)
    if state == "Z":
        return False
    if start is not None:
        now = start_time(pid)
        return now is None or now == start  # unreadable: assume it is the same
    return True


def command_line(pid: int) -> list[str] | None:
    """The process's arguments, or None where they cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]
