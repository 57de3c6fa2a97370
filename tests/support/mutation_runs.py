"""The mutation test's runs (mutations.py, one process per family, each in its family's
environment), started in the background when that test is collected: they are single
processes, which fill the core the DAG tests' one-job stretches leave idle (conftest starts
them, as it starts the image builds). The test's fixture waits for them."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from onnxforge.core import checkout
from onnxforge.families import FAMILIES
from registry import REPO, python_for

SCRIPT = Path(__file__).with_name("mutations.py")
TIMEOUT_S = 1800

_runs: dict[str, tuple[subprocess.Popen, Path]] = {}


def start() -> None:
    """Each family's run, once."""
    if _runs:
        return
    folder = Path(tempfile.mkdtemp(prefix="onnxforge-mutation-runs-"))
    for family in FAMILIES.values():
        python = checkout.local_python(family.environment, REPO)
        if not python.exists():  # results() says which (python_for)
            continue
        out = folder / f"{family.name}.json"
        command = [str(python), str(SCRIPT), str(out), family.name]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _runs[family.name] = (process, out)


def results() -> dict[str, dict]:
    """Every family's table (starting the runs if nothing did), or an assertion naming the
    family whose run failed and its last output."""
    start()
    for family in FAMILIES.values():
        python_for(family)  # fails the test where its environment is missing
    table = {}
    for name, (process, out) in _runs.items():
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
        table |= json.loads(out.read_text())
    return table


def stop() -> None:
    for process, _ in _runs.values():
        if process.poll() is None:
            process.kill()
