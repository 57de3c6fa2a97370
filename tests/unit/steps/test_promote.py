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


def _onnx_export(directory):
    """A real (tiny) export: model.onnx with its weights in model.onnx.data, and a manifest."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    directory.mkdir(parents=True)
    onnx.save_model(
        model,
        str(directory / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    outputs.write_manifest(directory, "export", {})


def test_a_release_is_plain_files_that_onnx_opens(tmp_path, monkeypatch):
    """Copies, never hard links of the export's: onnx (1.23) refuses a hard-linked model file
    ("hardlink attack"), and a release must not change with a later export."""
    import onnx

    _build(tmp_path / "build", monkeypatch, 0)  # the other steps' folders
    root = tmp_path / "build"
    export = root / "export/real"
    _onnx_export(export)
    out = root / "release-real"
    out.mkdir()
    steps = StepDirs(root / "download", root / "stage", export, root / "parity/f32")
    promote("m/c/real", steps, root / "parity/f32.passed.json", out, "snakemake")
    for name in ("model.onnx", "model.onnx.data"):
        assert (out / name).stat().st_nlink == 1, name
        assert (export / name).stat().st_nlink == 1, name
        assert (out / name).read_bytes() == (export / name).read_bytes()
    model = onnx.load(str(out / "model.onnx"))  # with its external data
    assert model.graph.initializer[0].name == "w"
    onnx.checker.check_model(str(out / "model.onnx"))
    manifest = json.loads((out / outputs.MANIFEST).read_text())
    assert manifest["outputs"]["model.onnx.data"] == outputs.sha256_file(out / "model.onnx.data")


def test_promote_refuses_before_writing_when_the_disk_cannot_hold_the_release(
    tmp_path, monkeypatch
):
    import errno
    import shutil
    from collections import namedtuple

    import pytest

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(OSError) as refused:
        _build(tmp_path, monkeypatch, 0)
    assert refused.value.errno == errno.ENOSPC
    assert refused.value.filename == str(tmp_path / "release")
    assert "No space left on device: it needs" in refused.value.strerror
    assert not list((tmp_path / "release").iterdir())


def _release(folder):
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text("o")
    (folder / outputs.MANIFEST).write_text("{}")
    return folder


def test_withdraw_a_release_or_every_release_of_a_checkpoint(tmp_path):
    from onnxforge.steps.promote import withdraw

    checkpoint = tmp_path / "release/m/c"
    f32, f16 = _release(checkpoint / "f32"), _release(checkpoint / "f16")
    other = _release(tmp_path / "release/m/other/f32")
    assert withdraw(f32) == [f32]
    assert not f32.exists() and f16.exists()
    assert withdraw(f32) == []  # nothing there: nothing to do
    _release(f32)
    stale = checkpoint / "f16.tmp-999999999"  # a withdrawal cut short, by a process now gone
    stale.mkdir()
    assert withdraw(checkpoint) == [f16, f32]
    assert not list(checkpoint.iterdir())
    assert other.exists()
    assert withdraw(tmp_path / "release/m/none") == []
