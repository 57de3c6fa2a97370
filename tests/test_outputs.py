import json

import pytest

from onnxforge import outputs


def test_directory_appears_only_when_complete(tmp_path):
    dest = tmp_path / "step"
    with pytest.raises(RuntimeError), outputs.atomic_directory(dest) as tmp:
        (tmp / "half-written").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []

    with outputs.atomic_directory(dest) as tmp:
        (tmp / "done").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["step"]


def test_stale_temporaries_from_a_killed_run_are_removed(tmp_path):
    (tmp_path / "step.tmp-99999").mkdir()
    with outputs.atomic_directory(tmp_path / "step") as tmp:
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step"]


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
