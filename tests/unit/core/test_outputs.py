import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from onnxforge.core import outputs


def test_directory_appears_only_when_complete(tmp_path):
    dest = tmp_path / "step"
    with pytest.raises(RuntimeError), outputs.atomic_directory(dest) as tmp:
        (tmp / "half-written").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []

    with outputs.atomic_directory(dest) as tmp:
        (tmp / "done").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["step"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_onnxforge_process():
    """A running process whose command line names onnxforge, as a step's would."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "onnxforge"])
    yield process.pid
    process.kill()
    process.wait()


def test_stale_temporaries_from_a_killed_run_are_removed(tmp_path):
    (tmp_path / f"step.tmp-{dead_pid()}").mkdir()
    (tmp_path / f"step.tmp-{dead_pid()}.old").mkdir()  # a replaced destination
    (tmp_path / f".report.json.tmp-{dead_pid()}").write_text("{")
    with outputs.atomic_directory(tmp_path / "step") as tmp:
        (tmp / "f").write_text("x")
    outputs.write_json(tmp_path / "report.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "step"]


@pytest.fixture
def live_other_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_live_writers_temporary_is_kept(tmp_path, live_onnxforge_process, live_other_process):
    """A concurrent run writing the same output keeps its work; a pid reused by another
    program (its command line runs no onnxforge) does not protect a leftover."""
    live = tmp_path / f"step.tmp-{live_onnxforge_process}"
    live.mkdir()
    reused = tmp_path / f"step.tmp-{live_other_process}"
    reused.mkdir()
    with outputs.atomic_directory(tmp_path / "step") as tmp:
        (tmp / "f").write_text("x")
    assert live.exists() and not reused.exists()


def test_replacing_a_destination_never_leaves_it_half_removed(tmp_path, monkeypatch):
    dest = tmp_path / "step"
    with outputs.atomic_directory(dest) as tmp:
        (tmp / "old").write_text("x")
    removed = []
    monkeypatch.setattr(outputs.shutil, "rmtree", lambda p, **kw: removed.append(Path(p).name))
    with outputs.atomic_directory(dest) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in dest.iterdir()] == ["new"]
    assert removed == [f"step.tmp-{os.getpid()}.old"]  # moved aside whole, then removed


def test_remove_tree_moves_aside_first(tmp_path):
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "model.onnx").write_text("x")
    outputs.remove_tree(tmp_path / "release")
    assert list(tmp_path.iterdir()) == []


def test_value_digest_names_dtype_shape_and_values():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    digest = outputs.value_digest(a)
    assert digest["dtype"] == "float32" and digest["shape"] == [2, 3]
    assert digest == outputs.value_digest(np.asfortranarray(a))  # layout in memory: no matter
    assert digest == outputs.value_digest(a.astype(">f4"))  # nor byte order
    assert digest["sha256"] != outputs.value_digest(a + 1)["sha256"]
    assert outputs.value_digest(np.float32(1.0))["shape"] == []
    bf16 = outputs.value_digest(a.astype(ml_dtypes.bfloat16))
    assert bf16["dtype"] == "bfloat16" and bf16["sha256"] != digest["sha256"]


def test_manifest_hashes_inputs_and_outputs(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"abc")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("hello")
    outputs.write_manifest(out, "test", {"source": source})
    manifest = json.loads((out / outputs.MANIFEST).read_text())
    assert manifest["inputs"]["source"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert set(manifest["outputs"]) == {"a.txt"}
    assert manifest["environment"]["packages"]["jax"]
    assert manifest["environment"]["lock_sha256"]


def test_inputs_with_a_manifest_are_not_hashed_again(tmp_path):
    upstream = tmp_path / "download"
    upstream.mkdir()
    (upstream / "big.bin").write_bytes(b"weights")
    outputs.write_manifest(upstream, "download", {}, known_outputs={"big.bin": "from-the-hub"})
    assert json.loads((upstream / "manifest.json").read_text())["outputs"] == {
        "big.bin": "from-the-hub"
    }
    out = tmp_path / "stage"
    out.mkdir()
    manifest = outputs.write_manifest(out, "stage", {"checkpoint": upstream})
    assert manifest["inputs"]["checkpoint"] == {"big.bin": "from-the-hub"}


def test_errors_raised_inside_name_the_destination_not_the_temporary(tmp_path):
    """The temporary is deleted on failure: a message naming it would send the user nowhere."""
    from onnxforge.core.errors import InputError

    dest = tmp_path / "stage"
    with pytest.raises(InputError) as err, outputs.atomic_directory(dest) as tmp:
        raise InputError(f"{tmp}/params/x: bad; also {tmp.resolve()} and {tmp.name}.")
    message = str(err.value)
    assert ".tmp-" not in message
    assert message == f"{dest}/params/x: bad; also {dest.resolve()} and stage."
    with pytest.raises(FileNotFoundError) as err, outputs.atomic_directory(dest) as tmp:
        (tmp / "missing" / "f").read_text()
    assert err.value.filename == str(dest / "missing" / "f")
    assert ".tmp-" not in str(err.value)


def test_manifest_keeps_volatile_fields_apart(tmp_path, monkeypatch):
    """Two clean builds of the same thing, at other times, by other commands, from another
    checkout: byte-identical manifests once the volatile block is set aside."""
    texts = []
    for run, argv in enumerate((["onnxforge", "stage", "--out", "a"], ["other", "command"])):
        out = tmp_path / f"out{run}"
        out.mkdir()
        (out / "a.txt").write_text("hello")
        monkeypatch.setattr(outputs.sys, "argv", argv)
        monkeypatch.setattr(
            outputs.time, "gmtime", lambda run=run: (2026, 1, 1 + run, 0, 0, 0, 0, 1, 0)
        )
        lock = tmp_path / f"checkout{run}" / "jax.lock.txt"
        lock.parent.mkdir()
        lock.write_text("jax==0.7.0\n")
        monkeypatch.setenv("ONNXFORGE_LOCK", str(lock))
        manifest = outputs.write_manifest(
            out, "stage", {}, {"family": "gpt_oss"}, volatile={"seconds": 1.5 + run}
        )
        assert manifest["volatile"]["command"] == argv
        assert manifest["volatile"]["seconds"] == 1.5 + run
        assert manifest["volatile"]["created"] == f"2026-01-0{1 + run}T00:00:00Z"
        assert manifest["volatile"]["lock_path"] == str(lock)
        assert not {"created", "command", "seconds"} & set(manifest)
        assert "lock_path" not in manifest["environment"]
        text = (out / outputs.MANIFEST).read_text()
        assert json.loads(text) == manifest
        texts.append(text)
    first, second = (json.loads(t) for t in texts)
    assert first != second
    assert outputs.stable_view(first) == outputs.stable_view(second)
    assert "volatile" not in outputs.stable_view(first) and "volatile" in first
    # the rest of the file, byte for byte: the volatile block is the only difference
    block = [outputs.stable_text(t) for t in texts]
    assert block[0] == block[1] and '"volatile"' not in block[0]


def test_stable_text_is_the_manifest_without_its_volatile_block():
    manifest = {"b": 1, "volatile": {"created": "x", "command": ["a"]}, "a": [1]}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert (
        outputs.stable_text(text) == json.dumps({"a": [1], "b": 1}, indent=2, sort_keys=True) + "\n"
    )


def test_volatile_field_reads_old_and_new_manifests():
    assert outputs.volatile_field(
        {"volatile": {"command": ["a"]}, "command": ["b"]}, "command"
    ) == ["a"]
    assert outputs.volatile_field({"command": ["b"]}, "command") == ["b"]
    assert outputs.volatile_field({"environment": {"lock_path": "/x"}}, "lock_path") == "/x"
    assert outputs.volatile_field({}, "command") is None
