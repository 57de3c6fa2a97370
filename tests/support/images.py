"""The container tests' image builds, started in the background when those tests are collected.

An image build is mostly downloading and unpacking wheels, so it overlaps well with the DAG
tests' computing: conftest starts the builds at collection and runs the container tests last,
and each test's fixture waits only for the image it needs. One build at a time, in the order
the tests use them; each is ``containers/build.sh FLAVOR --engine podman``, as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "containers" / "build.sh"
FLAVORS = ("cpu", "cuda", "maxtext")
BUILD_TIMEOUT_S = 3600

_results: dict[str, subprocess.CompletedProcess] = {}
_done = {flavor: threading.Event() for flavor in FLAVORS}
_running: list[subprocess.Popen] = []
_started = threading.Event()


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    # Rootful podman's default ulimits can exceed this host's hard limits (runc then fails with
    # "error setting rlimit"); build.sh writes a containers.conf within them when needed.
    conf = subprocess.run(
        [str(BUILD), "podman-conf"], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    if conf:
        env["CONTAINERS_CONF"] = conf
    return env


def _build(flavor: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(BUILD), flavor, "--engine", "podman"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: stop() ends podman with it
    )
    _running.append(process)
    try:
        output, _ = process.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        output, _ = process.communicate()
        output += f"\n(build of {flavor} killed after {BUILD_TIMEOUT_S} s)"
    finally:
        _running.remove(process)
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def _build_all(env: dict[str, str]) -> None:
    for flavor in FLAVORS:
        try:
            _results[flavor] = _build(flavor, env)
        except Exception as error:  # reported by the test that needs the image
            _results[flavor] = subprocess.CompletedProcess([], 1, "", repr(error))
        finally:
            _done[flavor].set()


def start() -> None:
    """Start building every flavor, once; without podman nothing starts (the tests then fail,
    saying how to install it)."""
    if _started.is_set() or shutil.which("podman") is None:
        return
    _started.set()
    threading.Thread(target=_build_all, args=(engine_env(),), daemon=True).start()


def stop() -> None:
    """End a build still running when the session ends (a run cut short by -x, say)."""
    for process in list(_running):
        _kill(process)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def built(flavor: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The finished build of ``flavor``: the background one, or one run now if none started."""
    if not _started.is_set():
        return _build(flavor, env)
    _done[flavor].wait()
    return _results[flavor]
