import hashlib
import json
import os
import shutil

import pytest

from onnxforge.core.errors import InputError
from onnxforge.core.outputs import hash_tree
from onnxforge.driver.cli import main
from onnxforge.steps.download.sources import (
    SourceChanged,
    download,
    parse_source,
    source_state,
    verify_download,
)


def test_synthetic_checkpoints_are_deterministic(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        download("synthetic://gpt_oss?seed=7&num_hidden_layers=1", tmp_path / name)
    assert hash_tree(tmp_path / "a") == hash_tree(tmp_path / "b")
    (tmp_path / "c").mkdir()
    download("synthetic://gpt_oss?seed=8&num_hidden_layers=1", tmp_path / "c")
    assert hash_tree(tmp_path / "a") != hash_tree(tmp_path / "c")


def test_local_directory_is_copied_with_hashes(tiny_checkpoint, tmp_path):
    out = tmp_path / "download"
    assert main(["download", "--source", f"file://{tiny_checkpoint}", "--out", str(out)]) == 0
    assert hash_tree(out).items() >= hash_tree(tiny_checkpoint).items()


def test_parse_source_options():
    source = parse_source("synthetic://gpt_oss?seed=3&init_std=0.5&tie_word_embeddings=true")
    assert source.options == {"seed": 3, "init_std": 0.5, "tie_word_embeddings": True}


@pytest.mark.parametrize(
    "uri,message",
    [
        ("s3://bucket/model", "unsupported scheme 's3'"),
        ("synthetic://gpt_oss?hidden=3", "unknown parameter"),
        ("synthetic://llama9", "unknown model family 'llama9'"),
        ("file://checkpoints/tiny", r"file:// takes an absolute path, .*'checkpoints' would be"),
        ("file://./tiny", r"file:// takes an absolute path"),
    ],
)
def test_bad_sources(uri, message, tmp_path):
    with pytest.raises(InputError, match=message):
        download(uri, tmp_path)


def test_missing_directory_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "download"
    assert main(["download", "--source", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parse_hub_sources():
    assert parse_source("hf://openai/gpt-oss-20b@main").options == {"revision": "main"}
    assert parse_source("hf://openai/gpt-oss-20b").location == "openai/gpt-oss-20b"
    with pytest.raises(InputError, match=r"expected hf://org/repo\[@revision\]"):
        parse_source("hf://just-a-name")


@pytest.mark.parametrize(
    "revision",
    [
        "not a sha!",
        "main..dev",
        "v1^",
        "~1",
        "a:b",
        "x?",
        "x*",
        "br[1]",
        ".hidden",
        "ends.lock",
        "ends/",
        "a//b",
        "@",
        "x@{1}",
        "back\\slash",
        "tab\there",
        "dot.",
    ],
)
def test_a_revision_no_git_ref_can_be_is_refused_at_once(revision):
    with pytest.raises(InputError, match=r"is not a branch, tag or commit sha") as err:
        parse_source(f"hf://openai/gpt-oss-20b@{revision}")
    assert "\n" not in str(err.value) and "hf://openai/gpt-oss-20b@" in str(err.value)


@pytest.mark.parametrize(
    "revision",
    ["main", "v1.0", "refs/pr/1", "6cee5e81ee83917806bbde320786a8fb61efebee", "release/2026-01"],
)
def test_revisions_git_accepts_are_kept(revision):
    assert parse_source(f"hf://openai/gpt-oss-20b@{revision}").options == {"revision": revision}


# file:// sources: copied (never linked to files the user may edit later), links resolved
# only within the folder or its Hugging Face cache repo, re-hashed by verify_download.


def _download(source, out, capsys=None):
    code = main(["download", "--source", f"file://{source}", "--out", str(out)])
    err = capsys.readouterr().err if capsys else ""
    return code, err


def _local(tiny_checkpoint, tmp_path, name="source"):
    source = tmp_path / name
    shutil.copytree(tiny_checkpoint, source)
    return source


def test_a_local_file_edited_in_place_later_leaves_the_download_as_it_was(
    tiny_checkpoint, tmp_path
):
    """safetensors' save_file rewrites the same inode: a hard link would follow the edit."""
    source = _local(tiny_checkpoint, tmp_path)
    out = tmp_path / "download"
    assert _download(source, out)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").stat().st_ino != (source / "model.safetensors").stat().st_ino
    with (source / "model.safetensors").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    assert (out / "model.safetensors").read_bytes() == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"] == {
        "sha256": hashlib.sha256(before).hexdigest(),
        "size": len(before),
    }
    assert manifest["outputs"]["model.safetensors"] == hashlib.sha256(before).hexdigest()


def test_verify_download_rehashes_the_source(tiny_checkpoint, tmp_path):
    source = _local(tiny_checkpoint, tmp_path)
    out = tmp_path / "download"
    assert _download(source, out)[0] == 0
    verify_download(out)  # unchanged
    state = source_state(f"file://{source}")
    with (source / "model.safetensors").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    (source / "config.json").unlink()
    (source / "extra.txt").write_text("new")
    with pytest.raises(SourceChanged) as err:
        verify_download(out)
    message = str(err.value)
    assert "\n" not in message and f"file://{source}" in message and str(out) in message
    assert "model.safetensors (sha256 " in message
    assert "config.json (removed)" in message and "extra.txt (added)" in message
    assert "download it again" in message
    assert source_state(f"file://{source}") != state


def test_source_state_is_stable_and_only_hashes_file_sources(tiny_checkpoint, tmp_path):
    source = _local(tiny_checkpoint, tmp_path)
    assert source_state(f"file://{source}") == source_state(str(source))
    assert source_state("synthetic://gpt_oss?seed=0") == ""
    assert source_state("hf://openai/gpt-oss-20b@main") == ""


def test_verify_download_of_other_sources_is_a_no_op(tmp_path):
    out = tmp_path / "download"
    assert main(["download", "--source", "synthetic://gpt_oss?seed=1", "--out", str(out)]) == 0
    verify_download(out)


@pytest.fixture
def hf_cache(tiny_checkpoint, tmp_path, monkeypatch):
    """A real Hugging Face cache, written by huggingface_hub from tests/support/hub_server.py: each
    snapshot file is a relative link into ../../blobs/ (../../../blobs/ one folder down)."""
    from huggingface_hub import constants, hf_hub_download

    from hub_server import HubServer

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    files = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file()}
    files["original/params.json"] = b'{"dim": 64}\n'
    commit = hashlib.sha1(b"snapshot").hexdigest()
    cache = tmp_path / "hf-cache"
    repos = {"acme/tiny": {commit: files}, "acme/other": {commit: {"other.bin": b"x"}}}
    with HubServer(repos, {}) as server:
        for repo, repo_files in repos.items():
            for name in repo_files[commit]:
                hf_hub_download(repo, name, revision=commit, cache_dir=cache, endpoint=server.url)
    snapshot = cache / "models--acme--tiny" / "snapshots" / commit
    assert os.readlink(snapshot / "model.safetensors").startswith("../../blobs/")
    assert os.readlink(snapshot / "original/params.json").startswith("../../../blobs/")
    return snapshot, files


def test_a_hugging_face_cache_snapshot_is_a_source(hf_cache, tmp_path, capsys):
    snapshot, files = hf_cache
    out = tmp_path / "download"
    assert _download(snapshot, out)[0] == 0
    for name, data in files.items():
        assert not (out / name).is_symlink() and (out / name).read_bytes() == data
    verify_download(out)
    # one folder down, its links (../../../blobs/) are followed too: the only complaint is that
    # it holds no weights
    code, err = _download(snapshot / "original", tmp_path / "original", capsys)
    assert code == 2 and "holds no *.safetensors file" in err
    blob = (snapshot / "model.safetensors").resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1])
    with pytest.raises(SourceChanged, match=r"model\.safetensors \(sha256 "):
        verify_download(out)


def test_a_link_into_another_repos_blobs_is_refused(hf_cache, tmp_path, capsys):
    snapshot, _ = hf_cache
    other = next((snapshot.parents[2] / "models--acme--other" / "blobs").iterdir())
    (snapshot / "sneaky.bin").symlink_to(os.path.relpath(other, snapshot))
    code, err = _download(snapshot, tmp_path / "download", capsys)
    assert code == 2
    assert f"sneaky.bin is a link to {other}, outside {snapshot}" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["outside", "broken", "folder"])
def test_bad_links_are_refused_in_one_line(tiny_checkpoint, tmp_path, capsys, kind):
    source = _local(tiny_checkpoint, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.bin").write_bytes(b"secret")
    link = source / "weights.bin"
    if kind == "outside":
        link.symlink_to(elsewhere / "secret.bin")
        expected = f"weights.bin is a link to {elsewhere / 'secret.bin'}, outside {source}"
    elif kind == "broken":
        link.symlink_to(tmp_path / "nothing-here")
        expected = f"weights.bin is a broken link (to {tmp_path / 'nothing-here'})"
    else:
        link.symlink_to(elsewhere)
        expected = "weights.bin is a link to a folder"
    out = tmp_path / "download"
    code, err = _download(source, out, capsys)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert ".tmp-" not in err
    assert not out.exists() and not list(tmp_path.glob("download.tmp-*"))


def test_a_link_within_the_folder_is_followed(tiny_checkpoint, tmp_path):
    source = _local(tiny_checkpoint, tmp_path)
    (source / "sub").mkdir()
    (source / "sub" / "config.json").symlink_to("../config.json")
    out = tmp_path / "download"
    assert _download(source, out)[0] == 0
    assert (out / "sub/config.json").read_bytes() == (source / "config.json").read_bytes()
    assert not (out / "sub/config.json").is_symlink()


def test_git_and_tool_metadata_are_not_copied(tiny_checkpoint, tmp_path):
    source = _local(tiny_checkpoint, tmp_path)
    for folder in (".git/lfs/objects", ".cache/huggingface/download"):
        (source / folder).mkdir(parents=True)
        (source / folder / "blob").write_bytes(b"a second copy of the weights")
    (source / "manifest.json").write_text("{}")  # a previous onnxforge download's
    out = tmp_path / "download"
    assert _download(source, out)[0] == 0
    assert not (out / ".git").exists() and not (out / ".cache").exists()
    assert json.loads((out / "manifest.json").read_text())["step"] == "download"


def test_a_download_folder_inside_its_source_is_refused(tiny_checkpoint, tmp_path, capsys):
    source = _local(tiny_checkpoint, tmp_path)
    code, err = _download(source, source / "results" / "download", capsys)
    assert code == 2 and "is inside the source" in err
