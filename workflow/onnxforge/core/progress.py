"""Progress of a step's long phases: a live bar on the console of an interactive run, and one
line per phase in the step's log.

A step's output goes to its log (the rule redirects it), never to a terminal. When the driver
(``snakemake``, ``onnxforge build``) runs on a terminal, the Snakefile records it in
``ONNXFORGE_CONSOLE`` as ``host:/dev/pts/N``; a step on that host draws its bars there (tqdm,
cleared when the phase ends), one on another host (a cluster node) does not. The log gets one
line as each phase ends: what it did, how much of how much, how long. In CI (no terminal)
that line is all.

    progress.begin("stage", "tiny-llama/hf")              # once per step (cli.main)
    with progress.phase("write", total=nbytes, items=n, item="tensors") as p:
        p.advance(nbytes_of_one, items=1)
    with progress.phase("save", total=nbytes, watch=out_dir):  # bytes: what is on disk
        save(...)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

CONSOLE_ENV = "ONNXFORGE_CONSOLE"
_REFRESH_S = 0.5
_step = {"name": "", "label": ""}


def driver_console() -> str | None:
    """``host:terminal`` of this process's stderr when it is a terminal (for the Snakefile)."""
    try:
        if sys.stderr.isatty():
            return f"{socket.gethostname()}:{os.ttyname(sys.stderr.fileno())}"
    except (OSError, ValueError):
        pass
    return None


def begin(step: str, label: str = "") -> None:
    """Name the step (and its target) that the phases belong to."""
    _step.update(name=step, label=label)


def _console() -> TextIO | None:
    """The driver's terminal, when it is on this host and can be opened."""
    host, _, path = os.environ.get(CONSOLE_ENV, "").partition(":")
    if not path or host != socket.gethostname():
        return None
    try:
        return open(path, "a", buffering=1)  # closed with the phase
    except OSError:
        return None


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):  # a file renamed away while we look
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def size(n: float) -> str:
    """A byte count for people: 438.5 kB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Phase:
    """One phase's counts: ``done`` of ``total`` (bytes, or ``unit``s) and ``items_done`` of
    ``items`` (tensors, files). Thread-safe: the hub's downloads advance it from threads."""

    def __init__(self, name: str, total: int | None, unit: str, items: int | None, item: str):
        self.name, self.total, self.unit, self.items, self.item = name, total, unit, items, item
        self.done = 0
        self.items_done = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._bar: Any = None

    def advance(self, amount: int = 0, items: int = 0) -> None:
        with self._lock:
            self.done += amount
            self.items_done += items
            if self._bar is not None:
                self._bar.update(amount)
                if self.items:
                    self._bar.set_postfix_str(f"{self.items_done}/{self.items} {self.item}")

    def set_done(self, amount: int) -> None:
        self.advance(amount - self.done)

    def summary(self) -> str:
        parts = []
        if self.items is not None:
            parts.append(f"{self.items_done} of {self.items} {self.item}")
        if self.total is not None or self.done:
            show = size if self.unit == "B" else str
            of = f" of {show(self.total)}" if self.total is not None else ""
            parts.append(f"{show(self.done)}{of}")
        parts.append(f"{time.perf_counter() - self.started:.1f} s")
        return ", ".join(parts)


def _log_line(phase: Phase) -> str:
    # Not "onnxforge ...": the rules show a failed step's lines of that form on the console.
    return f"[{_step['name'] or 'onnxforge'}] {phase.name}: {phase.summary()}"


@contextlib.contextmanager
def phase(
    name: str,
    total: int | None = None,
    *,
    unit: str = "B",
    items: int | None = None,
    item: str = "",
    watch: Path | Callable[[], int] | None = None,
) -> Iterator[Phase]:
    """A phase of the current step; its line goes to stderr (the log) when it ends well.

    ``watch``: a file or folder whose size on disk is the phase's progress (for a save done
    by a library in one call), or a function returning the bytes done."""
    current = Phase(name, total, unit, items, item)
    measure: Callable[[], int] | None
    if watch is None or callable(watch):
        measure = watch
    else:
        watched = Path(watch)
        measure = lambda: _size_of(watched) if watched.exists() else 0  # noqa: E731
    console = _console()
    stop = threading.Event()
    ticker = None
    if console is not None:
        from tqdm import tqdm

        label = " ".join(p for p in (_step["name"], _step["label"]) if p)
        counted = total is not None or items is not None or measure is not None
        current._bar = tqdm(
            total=total, unit=unit, unit_scale=unit == "B", desc=f"{label}: {name}",
            file=console, leave=False, dynamic_ncols=True, mininterval=_REFRESH_S,
            bar_format=None if counted else "{desc} {elapsed}",
        )  # fmt: skip

        def tick() -> None:  # elapsed time (and the watched size) move without updates
            while not stop.wait(_REFRESH_S):
                if measure is not None:
                    current.set_done(measure())
                with current._lock:
                    current._bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    try:
        yield current
        if measure is not None:
            current.set_done(measure())
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        if current._bar is not None:
            current._bar.close()
            current._bar = None
        if console is not None:
            console.close()
    print(_log_line(current), file=sys.stderr, flush=True)


def hub_bar(current: Phase) -> tuple[type, Callable[[], int]]:
    """A ``tqdm_class`` for one ``hf_hub_download`` call that adds its bytes to ``current``,
    and a function giving the bytes it counted. Not a tqdm subclass, so huggingface_hub hands
    it every update whatever its own progress-bar settings; ``update_transfer`` makes its xet
    path use one bar for both counts, of which only the file's bytes are kept."""
    counted = [0]
    lock = threading.Lock()

    class HubBar:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def update(self, n: float = 1) -> None:
            with lock:
                counted[0] += int(n)
            current.advance(int(n))

        def update_transfer(self, n: float = 1) -> None:
            pass  # network bytes of xet transfers: the file's own bytes are counted above

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> HubBar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    return HubBar, lambda: counted[0]
