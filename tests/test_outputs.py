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


def test_errors_raised_inside_name_the_destination_not_the_temporary(tmp_path):
    """The temporary is deleted on failure: a message naming it would send the user nowhere."""
    from onnxforge.errors import InputError

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
