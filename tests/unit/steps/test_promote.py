"""Promote: the release manifest names every input, with the commands in its volatile block."""

from __future__ import annotations

import json

from onnxforge.core import outputs
from onnxforge.steps.promote import StepDirs, promote


def _step(directory, files, step, monkeypatch, argv):
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    monkeypatch.setattr(outputs.sys, "argv", argv)
    outputs.write_manifest(
        directory, step, {}, {"source": "synthetic://x"} if step == "download" else {}
    )


def _build(root, monkeypatch, run):
    _step(root / "download", {"model.safetensors": "w"}, "download", monkeypatch, [f"dl{run}"])
    _step(root / "stage", {"config.json": "{}"}, "stage", monkeypatch, [f"st{run}"])
    _step(
        root / "export/f32",
        {"model.onnx": "o", "model.onnx.data": "d"},
        "export",
        monkeypatch,
        [f"ex{run}"],
    )
    _step(
        root / "parity/f32",
        {"report.md": "r", "report.json": "{}", "report.html": "h"},
        "parity",
        monkeypatch,
        [f"pa{run}"],
    )
    passed = root / "parity/f32.passed.json"
    passed.write_text(json.dumps({"status": "PASS", "summary": {"max_abs": 0.0}}))
    out = root / "release"
    out.mkdir()
    steps = StepDirs(root / "download", root / "stage", root / "export/f32", root / "parity/f32")
    promote("m/c/f32", steps, passed, out, f"snakemake run {run}")
    return json.loads((out / outputs.MANIFEST).read_text())


def test_release_manifest_is_stable_outside_its_volatile_block(tmp_path, monkeypatch):
    first, second = (_build(tmp_path / f"build{run}", monkeypatch, run) for run in (0, 1))
    assert first["volatile"]["command"] == "snakemake run 0"
    assert first["volatile"]["steps"] == {
        "download": ["dl0"],
        "stage": ["st0"],
        "export": ["ex0"],
        "parity": ["pa0"],
    }
    assert second["volatile"]["steps"]["parity"] == ["pa1"]
    assert "command" not in first and "steps" not in first
    assert first["locked_packages"]["jax2onnx"]
    assert outputs.stable_view(first) == outputs.stable_view(second)


def test_release_from_steps_written_before_the_volatile_block(tmp_path, monkeypatch):
    root = tmp_path / "old"
    manifest = _build(root, monkeypatch, 0)
    for step in ("download", "stage", "export/f32", "parity/f32"):
        path = root / step / outputs.MANIFEST
        old = json.loads(path.read_text())
        block = old.pop("volatile")
        old["command"], old["created"] = block["command"], block["created"]
        old["environment"]["lock_path"] = block["lock_path"]
        path.write_text(json.dumps(old))
    out = root / "release2"
    out.mkdir()
    steps = StepDirs(root / "download", root / "stage", root / "export/f32", root / "parity/f32")
    promote("m/c/f32", steps, root / "parity/f32.passed.json", out, "snakemake again")
    again = json.loads((out / outputs.MANIFEST).read_text())
    assert again["volatile"]["steps"] == manifest["volatile"]["steps"]
    assert again["locked_packages"] == manifest["locked_packages"]
