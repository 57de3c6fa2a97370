"""hf:// downloads through the real huggingface_hub client, against tests/support/hub_server.py."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from hub_server import HubServer
from onnxforge.core.errors import InputError
from onnxforge.core.outputs import hash_tree
from onnxforge.steps.download.hub import download_hf

REPO = "acme/tiny-gpt-oss"
OLD = hashlib.sha1(b"first commit").hexdigest()
NEW = hashlib.sha1(b"second commit").hexdigest()


@pytest.fixture(scope="module")
def commits(tiny_checkpoint) -> dict[str, dict[str, bytes]]:
    """Two commits of a real checkpoint; the newer one adds an ``original/`` folder."""
    files = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file()}
    assert set(files) >= {"config.json", "model.safetensors"}
    original = {
        "original/params.json": b'{"dim": 64}\n',
        "original/model.safetensors": files["model.safetensors"][::-1],
    }
    return {OLD: dict(files), NEW: {**files, **original}}


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No token from the environment, a token file or OIDC (which could call out to refresh)."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def hub(commits, monkeypatch, no_credentials):
    server = HubServer({REPO: {k: dict(v) for k, v in commits.items()}}, {REPO: {"main": NEW}})
    server.refs[REPO]["v1"] = OLD
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def fetch(tmp_path: Path, revision: str | None = "main", name: str = "out", **options):
    out = tmp_path / name
    out.mkdir()
    options = {"include": None, "exclude": None, "cache_dir": tmp_path / "cache", **options}
    return out, download_hf(REPO, revision, out, **options)


def gets(hub: HubServer, name: str) -> list:
    """The GET requests for one repo file."""
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith(f"/{NEW}/{name}")]


def expected(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def test_branch_is_resolved_once_and_every_file_fetched_at_the_commit(hub, commits, tmp_path):
    out, record = fetch(tmp_path, "main")
    assert record["repo"] == REPO
    assert record["requested_revision"] == "main"
    assert record["revision"] == NEW
    assert hash_tree(out) == expected(commits[NEW])
    assert {k: v["sha256"] for k, v in record["files"].items()} == expected(commits[NEW])
    assert record["files"]["config.json"]["size"] == len(commits[NEW]["config.json"])
    resolves = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{NEW}/" in p for p in resolves)
    assert [r.path for r in hub.requests if "/api/" in r.path] == [
        f"/api/models/{REPO}/revision/main?blobs=true"
    ]


@pytest.mark.parametrize("revision", ["v1", OLD])
def test_tag_or_commit_sha(hub, commits, tmp_path, revision):
    out, record = fetch(tmp_path, revision)
    assert record["requested_revision"] == revision
    assert record["revision"] == OLD
    assert hash_tree(out) == expected(commits[OLD])


def test_include_and_exclude_patterns(hub, commits, tmp_path):
    out, record = fetch(tmp_path, include=["original/*"])
    assert sorted(record["files"]) == ["original/model.safetensors", "original/params.json"]
    assert (out / "original/model.safetensors").read_bytes() == commits[NEW][
        "original/model.safetensors"
    ]
    assert not gets(hub, "config.json")
    out, record = fetch(tmp_path, name="top", exclude=["original/*"])
    assert sorted(record["files"]) == sorted(commits[OLD])
    with pytest.raises(InputError, match=r"no file .* matches include=\['\*.gguf'\]"):
        fetch(tmp_path, name="none", include=["*.gguf"])


@pytest.mark.parametrize("chunk", [None, 1 << 16])
def test_connection_cut_mid_file_is_retried(hub, commits, tmp_path, monkeypatch, chunk):
    """huggingface_hub retries a cut transfer in the same call (after 1 s) with ``Range`` from the
    bytes it has written; it writes whole chunks (``DOWNLOAD_CHUNK_SIZE``, 10 MiB by default) and
    the chunk being read when the connection drops is lost, so a 430 KB file starts over."""
    from huggingface_hub import constants

    if chunk:
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    data = commits[NEW]["model.safetensors"]
    hub.cut["model.safetensors"] = 1
    out, record = fetch(tmp_path)
    assert (out / "model.safetensors").read_bytes() == data
    assert record["files"]["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    first, second = gets(hub, "model.safetensors")
    assert "range" not in first.headers
    if chunk:  # resumed after the whole chunks received before the cut (at half the file)
        assert second.headers["range"] == f"bytes={len(data) // 2 // chunk * chunk}-"
    else:
        assert "range" not in second.headers


def test_connection_cut_every_time_fails_and_the_next_run_completes(
    hub, commits, tmp_path, monkeypatch
):
    """Six cuts in a row exhaust huggingface_hub's retries (1 s apart, skipped here)."""
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    hub.cut["model.safetensors"] = 6
    with pytest.raises(InputError, match=r"lost the connection to the hub at .*HF_ENDPOINT"):
        fetch(tmp_path, name="first")
    assert len(gets(hub, "model.safetensors")) == 6
    out, _ = fetch(tmp_path, name="second")
    assert hash_tree(out) == expected(commits[NEW])
    assert len(gets(hub, "config.json")) == 1  # the finished file came from the cache


def test_failed_download_keeps_finished_files_for_the_next_run(hub, commits, tmp_path):
    hub.fail["model.safetensors"] = 1
    with pytest.raises(InputError, match=r"(?s)answered HTTP 500.*retry later"):
        fetch(tmp_path, name="first")
    before = len(gets(hub, "config.json"))
    assert before == 1
    out, _ = fetch(tmp_path, name="second")
    assert hash_tree(out) == expected(commits[NEW])
    assert len(gets(hub, "config.json")) == before  # served from the cache
    assert len(gets(hub, "model.safetensors")) == 2


@pytest.mark.parametrize(
    "name,kind", [("model.safetensors", "sha256"), ("config.json", "git blob sha1")]
)
def test_hash_mismatch_names_the_file_and_is_not_cached(hub, commits, tmp_path, name, kind):
    hub.corrupt.add(name)
    good = commits[NEW][name]
    want = hashlib.sha256(good).hexdigest() if kind == "sha256" else None
    with pytest.raises(InputError, match=f"{name}: {kind} expected {want or ''}") as err:
        fetch(tmp_path, name="bad")
    assert "run the download again" in str(err.value)
    hub.corrupt.clear()
    out, _ = fetch(tmp_path, name="good")
    assert (out / name).read_bytes() == good


def test_missing_repo(hub, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"repository 'acme/nope' not found .*HF_TOKEN"):
        download_hf("acme/nope", "main", out, include=None, exclude=None, cache_dir=tmp_path)


def test_a_malformed_revision_is_refused_before_the_hub_is_asked(hub, tmp_path):
    with pytest.raises(InputError, match=r"revision 'not a sha!' is not a branch, tag or commit"):
        fetch(tmp_path, "not a sha!")
    assert hub.requests == []


def test_missing_revision(hub, tmp_path):
    with pytest.raises(InputError, match="revision 'nope' does not exist in acme/tiny-gpt-oss"):
        fetch(tmp_path, "nope")


@pytest.mark.parametrize("name", ["../evil.txt", "original/../../evil.txt", "/tmp/evil.txt"])
def test_file_names_leaving_the_folder_are_refused(hub, tmp_path, name):
    hub.repos[REPO][NEW][name] = b"gotcha\n"
    with pytest.raises(InputError, match="outside the download folder"):
        fetch(tmp_path)
    assert not [r for r in hub.requests if "/resolve/" in r.path]
    assert not (tmp_path / "evil.txt").exists()
    # huggingface_hub refuses them too, before any request
    from huggingface_hub import hf_hub_download

    with pytest.raises(ValueError, match="Invalid filename"):
        hf_hub_download(REPO, name, revision=NEW, cache_dir=tmp_path / "c", endpoint=hub.url)
    assert not [r for r in hub.requests if "/resolve/" in r.path]


def test_token_from_the_environment_is_sent(hub, tmp_path, monkeypatch):
    fetch(tmp_path, name="anonymous")
    assert not any("authorization" in r.headers for r in hub.requests)
    monkeypatch.setenv("HF_TOKEN", "hf_loopback_token")
    hub.requests.clear()
    _, record = fetch(tmp_path, name="with-token", cache_dir=tmp_path / "cache2")
    assert len(hub.requests) == 1 + 2 * len(record["files"])  # model_info, HEAD + GET per file
    assert {r.headers.get("authorization") for r in hub.requests} == {"Bearer hf_loopback_token"}


def test_unreachable_hub_mentions_the_endpoint(monkeypatch, tmp_path, no_credentials):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(
        InputError, match=f"cannot reach .* hub at http://127.0.0.1:{port}.*HF_ENDPOINT"
    ):
        fetch(tmp_path)


def test_download_step_fetches_another_layout_into_a_folder(commits, monkeypatch, tmp_path):
    """`--extra flax=hf://...`: a second repository (Gemma's Flax layout, say) under flax/,
    recorded with its own revision and hashed like the rest."""
    import json

    from onnxforge.driver.cli import main

    flax = {"2b/_METADATA": b"{}", "2b/d/0": b"tensorstore bytes"}
    repos = {REPO: {NEW: dict(commits[NEW])}, "acme/tiny-flax": {OLD: flax}}
    server = HubServer(repos, {REPO: {"main": NEW}, "acme/tiny-flax": {"main": OLD}})
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        out = tmp_path / "download"
        argv = ["download", "--source", f"hf://{REPO}@main", "--out", str(out)]
        assert main([*argv, "--extra", "flax=hf://acme/tiny-flax@main"]) == 0
    assert (out / "flax/2b/d/0").read_bytes() == flax["2b/d/0"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["flax"]["revision"] == OLD
    assert manifest["outputs"]["flax/2b/_METADATA"] == hashlib.sha256(b"{}").hexdigest()
    assert manifest["outputs"]["config.json"] == expected(commits[NEW])["config.json"]


def test_files_linked_from_the_cache_are_read_only(hub, commits, tmp_path):
    """The download and the cache share each file's inode: an edit in place through either
    name would change the other, so neither can be written."""
    import stat

    out, _ = fetch(tmp_path)
    linked = [out / name for name in commits[NEW] if (out / name).stat().st_nlink > 1]
    assert linked  # the cache and the download are on one file system here
    for path in linked:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    again, _ = fetch(tmp_path, name="again")  # a read-only blob links again
    assert hash_tree(again) == expected(commits[NEW])
