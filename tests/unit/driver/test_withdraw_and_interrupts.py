"""Issue 24 in the steps' command (``python -m onnxforge STEP``): each step a release depends
on withdraws it when it starts (a rebuild that fails leaves no release), and Ctrl-C, a
read-only folder or a full disk is one line, never a traceback."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

from onnxforge.core import outputs
from onnxforge.driver import cli


def _release(folder):
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text("o")
    (folder / outputs.MANIFEST).write_text("{}")
    return folder


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_stage_that_fails_on_a_rebuild_leaves_no_release(tiny_checkpoint, tmp_path, capsys):
    """A source that had passed gets a NaN: its stage fails, and every variant's release of
    the checkpoint is gone with it (another checkpoint's stays)."""
    from safetensors.numpy import load_file, save_file

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    weights = checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].copy()
    tensors["model.norm.weight"][0] = np.nan
    save_file(tensors, str(weights))
    releases = tmp_path / "results/release/m/c"
    f32, f16 = _release(releases / "f32"), _release(releases / "f16")
    other = _release(tmp_path / "results/release/m/other/f32")
    out = tmp_path / "results/m/c/stage"
    code = cli.main(
        ["stage", "--family", "gpt_oss", "--checkpoint", str(checkpoint),
         "--withdraw", str(releases), "--out", str(out)]
    )  # fmt: skip
    assert code == 2
    assert "values are not finite" in _one_line(capsys)
    assert not f32.exists() and not f16.exists() and not out.exists()
    assert other.exists()
    assert not list(releases.glob("*.tmp-*"))


def test_a_download_withdraws_the_checkpoints_releases_when_it_starts(
    tiny_checkpoint, tmp_path, capsys
):
    releases = tmp_path / "release/m/c"
    f32 = _release(releases / "f32")
    out = tmp_path / "download"
    code = cli.main(
        ["download", "--source", f"file://{tiny_checkpoint}", "--withdraw", str(releases),
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert not f32.exists() and (out / "model.safetensors").exists()
    assert f"withdrawn (its download step is being remade): {f32}" in capsys.readouterr().out


@pytest.mark.parametrize("step", ["export", "parity"])
def test_export_and_parity_withdraw_their_variants_release(step, tmp_path, capsys):
    """Even when the step then fails at once (here: no stage folder)."""
    f32, f16 = _release(tmp_path / "release/m/c/f32"), _release(tmp_path / "release/m/c/f16")
    from onnxforge.driver import build, catalog

    config = build._config([])
    target = build.model_targets(config, "tiny-gpt-oss", ["f32"])[0]
    settings = catalog.parity_settings(config, target.model, target.checkpoint, "f32")
    missing = str(tmp_path / "no-stage")
    arguments = {
        "export": ["--dtype", "float32", "--opset", "21"],
        "parity": [
            "--checkpoint",
            missing,
            "--export",
            missing,
            "--settings",
            json.dumps(settings),
        ],
    }[step]
    code = cli.main(
        [step, "--family", "gpt_oss", "--stage", missing, *arguments, "--withdraw", str(f32),
         "--out", str(tmp_path / step)]
    )  # fmt: skip
    assert code != 0
    assert not f32.exists() and f16.exists()


def test_the_gate_withdraws_through_the_same_function(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"status": "FAIL", "failures": ["max_abs 1 > 0.001"]}))
    f32 = _release(tmp_path / "release/m/c/f32")
    code = cli.main(
        ["gate", "--report", str(report), "--release", str(f32), "--out", str(tmp_path / "p")]
    )
    assert code == 1 and not f32.exists()


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_download", interrupted)
    code = cli.main(["download", "--source", "synthetic://gpt_oss", "--out", str(tmp_path / "d")])
    assert code == 130
    assert _one_line(capsys) == (
        "onnxforge download: interrupted; run the same command again to resume"
    )


def test_ctrl_c_inside_a_step_leaves_no_temporary(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from onnxforge.steps.download import sources

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "download", interrupted)
    out = tmp_path / "download"
    assert cli.main(["download", "--source", f"file://{tiny_checkpoint}", "--out", str(out)]) == 130
    assert not out.exists() and not list(tmp_path.glob("download.tmp-*"))


@pytest.mark.parametrize(
    ("code", "strerror", "remedy"),
    [
        (errno.EROFS, "Read-only file system", "the file system is read-only: run from a"),
        (errno.ENOSPC, "No space left on device", "free some space"),
        (errno.EACCES, "Permission denied", "check the path and its permissions"),
    ],
)
def test_a_failed_write_is_one_line_naming_the_output(
    code, strerror, remedy, tmp_path, monkeypatch, capsys
):
    """A write() that fails names no file: the line names the step's output folder."""

    def fails(args):
        raise OSError(code, strerror)

    monkeypatch.setattr(cli, "cmd_download", fails)
    out = tmp_path / "results/m/c/download"
    assert cli.main(["download", "--source", "synthetic://gpt_oss", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"onnxforge download: error: {out}: {strerror}; {remedy}"), line


def test_stage_refuses_before_writing_when_the_checkpoint_cannot_fit(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 5))
    out = tmp_path / "stage"
    code = cli.main(
        ["stage", "--family", "gpt_oss", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    )
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith(f"onnxforge stage: error: {out}: No space left on device: it needs ")
    assert "free some space" in line
    assert not out.exists() and not list(tmp_path.glob("stage.tmp-*"))
