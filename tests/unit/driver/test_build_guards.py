"""Issue 24 in ``onnxforge build``: a read-only folder, Ctrl-C and another build of the same
folder are one line each, never a traceback (nor Snakemake's LockException and a wrong
verdict). Its --name refusals are cases of the bad-input corpus (test_bad_inputs.py)."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys

import pytest

from onnxforge.core import processes, runlock
from onnxforge.driver import build

MODEL = "tiny-gpt-oss"


class NoSnakemake:
    def __init__(self, *args, **kwargs):
        raise AssertionError("Snakemake must not run")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "tmpabc"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(build.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(build.subprocess, "Popen", NoSnakemake)
    assert build.main([MODEL]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"onnxforge build: error: {tmp_path}: Read-only file system; ")
    assert "run from a writable folder" in line


def test_ctrl_c_lets_snakemake_end_and_is_one_line(tmp_path, monkeypatch, capsys):
    waits = []

    class Interrupted:
        def __init__(self, command):
            self.command = command

        def wait(self, timeout=None):
            waits.append(timeout)
            if len(waits) == 1:
                raise KeyboardInterrupt
            return 130

        def kill(self):
            raise AssertionError("Snakemake ended on its own")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(build.subprocess, "Popen", Interrupted)
    assert build.main([MODEL]) == 130
    assert _one_line(capsys) == "onnxforge build: interrupted; run the same command again to resume"
    assert waits == [None, 60]


def _live_driver(workdir):
    """A recorded driver whose process runs (a sleep), as the Snakefile records one."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    records = workdir / ".snakemake" / runlock.RECORDS
    records.mkdir(parents=True)
    record = {"pid": sleeper.pid, "host": socket.gethostname()}
    record["start"] = processes.start_time(sleeper.pid)
    (records / f"{sleeper.pid}.json").write_text(json.dumps(record))
    return sleeper


@pytest.mark.parametrize("live", [True, False])
def test_another_build_of_the_same_folder_is_one_line(live, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = build._config([])
    target = build.model_targets(config, MODEL)[0]
    locks = tmp_path / ".snakemake" / runlock.LOCKS
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{target.release}\n{target.stage}\n")
    sleeper = _live_driver(tmp_path) if live else None
    ran = []

    class Snakemake:
        def __init__(self, command):
            ran.append(command)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(build.subprocess, "Popen", Snakemake)
    try:
        code = build.main([MODEL])
    finally:
        if sleeper:
            sleeper.kill()
            sleeper.wait()
    if not live:  # a lock no run holds: stale, the workflow removes it
        assert ran
        return
    assert code == 2 and not ran
    line = _one_line(capsys)
    assert line.startswith(f"onnxforge build: error: another build in {tmp_path} (process ")
    assert f"is building {target.model}/{target.checkpoint} now; wait for it to end" in line
