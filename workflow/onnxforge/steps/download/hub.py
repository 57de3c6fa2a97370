"""Hugging Face Hub sources (``hf://org/repo@revision``) through the ``huggingface_hub`` client.

- The revision is pinned: a branch or tag is resolved once (``model_info``) to its commit sha and
  every file is fetched at that sha; the manifest records both.
- Files go through the client's own cache (``cache_dir``, shared by every target; default
  ``$HF_HUB_CACHE`` or huggingface's default), then are hard-linked (or copied) into ``out_dir``.
  A file already complete in the cache is not fetched again, so a rerun after an interruption
  fetches only what is missing. Within one call, huggingface_hub 2.4.0 retries a transfer cut
  mid-file with a ``Range`` request (up to 5 times); a partial file is not kept across calls
  (its ``.incomplete`` name is unique to the call and deleted on failure).
- Every file is checked against the hashes the hub lists: the sha256 for LFS files, the git blob
  sha1 for the others. A mismatching file is evicted from the cache so that a rerun fetches it
  again.
- ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_CACHE`` are read when called (huggingface_hub reads
  ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` once, at import).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from onnxforge.core import progress
from onnxforge.core.errors import InputError
from onnxforge.core.outputs import MANIFEST, link_or_copy

_WORKERS = 4
_COMMIT = re.compile(r"[0-9a-f]{40}")
# What `git check-ref-format` refuses anywhere in a ref: control characters, space, ~ ^ : ? * [
# and backslash, "..", "@{" and "//".
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def check_revision(revision: str | None, where: str) -> None:
    """Refuse, before the hub is asked, a revision that no branch, tag or commit can be."""
    if revision is None:
        return
    if match := _REF_FORBIDDEN.search(revision):
        reason = f"it contains {match.group()!r}"
    elif revision == "@" or not revision:
        reason = "it is empty" if not revision else "'@' alone is not a ref"
    elif revision.startswith("/") or revision.endswith(("/", ".")):
        reason = "it begins or ends with '/', or ends with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")):
        reason = "a part begins with '.' or ends with '.lock'"
    else:
        return
    raise InputError(
        f"{where}: revision {revision!r} is not a branch, tag or commit sha ({reason}, which "
        "git refs cannot); use a branch, tag or 40-hex commit sha listed under the repo's "
        "'Files and versions'"
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _cache_dir(cache_dir: Path | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _describe(repo_id: str, revision: str | None) -> str:
    return f"hf://{repo_id}" + (f"@{revision}" if revision else "")


def _hub_error(err: Exception, where: str, repo_id: str, revision: str | None) -> InputError | None:
    """The user-facing error for what the hub client raised, or None when it is not the hub's."""
    import httpx2
    from huggingface_hub import errors as hf

    endpoint = _endpoint()
    token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
    if isinstance(err, hf.RevisionNotFoundError):
        return InputError(
            f"{where}: revision {revision!r} does not exist in {repo_id} on {endpoint}; "
            "use a branch, tag or 40-hex commit sha listed under the repo's 'Files and versions'"
        )
    if isinstance(err, hf.GatedRepoError):
        return InputError(
            f"{where}: {repo_id} is gated on {endpoint} ({token}); accept its terms on the repo "
            "page and set HF_TOKEN to a read token of that account"
        )
    if isinstance(err, hf.RepositoryNotFoundError):
        return InputError(
            f"{where}: repository {repo_id!r} not found on {endpoint} ({token}); check the "
            "org/name spelling, or for a private repo set HF_TOKEN to a token with read access"
        )
    if isinstance(err, hf.RemoteEntryNotFoundError):
        return InputError(
            f"{where}: a file listed for {repo_id} is missing on {endpoint}: {err}; "
            "pin a commit sha whose files are all present"
        )
    if isinstance(err, hf.HFValidationError):
        return InputError(f"{where}: {err}")
    network = (httpx2.TransportError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)
    if isinstance(err, network):
        return InputError(
            f"{where}: cannot reach or lost the connection to the hub at {endpoint} "
            f"({type(err).__name__}: {err}); check "
            "the network, or set HF_ENDPOINT to a reachable hub or mirror; files already "
            "downloaded stay in the cache and are not fetched again"
        )
    if isinstance(err, hf.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        return InputError(
            f"{where}: the hub at {endpoint} answered HTTP {status} ({err}); retry later "
            "(files already downloaded stay in the cache) or check HF_ENDPOINT"
        )
    return None


def _target(out_dir: Path, name: str, where: str) -> Path:
    """``out_dir / name``, refusing names that would land outside ``out_dir``."""
    parts = PurePosixPath(name).parts
    root = out_dir.resolve()
    target = out_dir.joinpath(*parts) if parts else out_dir
    bad = (
        not name
        or "\\" in name
        or PurePosixPath(name).is_absolute()
        or any(part in ("..", ".", "") for part in name.split("/"))
        or not target.resolve().is_relative_to(root)
        or target.resolve() == root
    )
    if bad:
        raise InputError(
            f"{where}: the repo lists a file named {name!r}, which would be written outside the "
            f"download folder {out_dir}; refusing to download. Leave it out with an exclude "
            "pattern, or ask the repo owner to rename it"
        )
    return target


def _hashes(path: Path) -> tuple[int, str, str]:
    """Size, sha256 and git blob sha1 of a file, in one read."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            sha256.update(block)
            sha1.update(block)
    return size, sha256.hexdigest(), sha1.hexdigest()


def _evict(pointer: str) -> None:
    """Remove a cached file (the snapshot link and the blob it points to)."""
    blob = os.path.realpath(pointer)
    for path in {pointer, blob}:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def download_hf(
    repo_id: str,
    revision: str | None,
    out_dir: Path,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
    cache_dir: Path | None,
) -> dict[str, Any]:
    """Fill ``out_dir`` with the repo's files at a pinned commit; return the manifest record."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import filter_repo_objects

    out_dir = Path(out_dir)
    where = _describe(repo_id, revision)
    check_revision(revision, where)
    endpoint = _endpoint()
    cache = _cache_dir(cache_dir)

    def hub_call(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Exception as err:
            mapped = _hub_error(err, where, repo_id, revision)
            if mapped is None:
                raise
            raise mapped from err

    info = hub_call(
        HfApi(endpoint=endpoint).model_info, repo_id, revision=revision, files_metadata=True
    )
    commit = info.sha or ""
    if not _COMMIT.fullmatch(commit):
        raise InputError(f"{where}: the hub at {endpoint} gave no commit sha ({commit!r})")
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = list(
        filter_repo_objects(sorted(siblings), allow_patterns=include, ignore_patterns=exclude)
    )
    if not names:
        listed = ", ".join(sorted(siblings)[:20]) or "none"
        raise InputError(
            f"{where}: no file of {repo_id}@{commit} matches include={include} "
            f"exclude={exclude}; the repo has: {listed}"
        )
    targets = {name: _target(out_dir, name, where) for name in names}
    if MANIFEST in names:
        raise InputError(
            f"{where}: the repo has a top-level {MANIFEST}, which would clash with the download "
            f"manifest; leave it out with exclude: ['{MANIFEST}']"
        )

    sizes = {name: siblings[name].size or 0 for name in names}

    def fetch(name: str, fetched: progress.Phase) -> str:
        bar, counted = progress.hub_bar(fetched)
        path = hub_call(
            hf_hub_download,
            repo_id,
            name,
            revision=commit,
            cache_dir=cache,
            endpoint=endpoint,
            tqdm_class=bar,
        )
        fetched.advance(sizes[name] - counted(), items=1)  # in the cache already: no bytes came
        return path

    with (
        progress.phase("fetch", sum(sizes.values()), items=len(names), item="files") as fetched,
        ThreadPoolExecutor(max_workers=min(_WORKERS, len(names))) as pool,
    ):
        cached = dict(zip(names, pool.map(lambda n: fetch(n, fetched), names), strict=True))

    files: dict[str, dict[str, Any]] = {}
    problems = []
    for name in names:
        size, sha256, blob_sha1 = _hashes(Path(cached[name]))
        sibling = siblings[name]
        if sibling.lfs is not None:
            kind, expected, actual = "sha256", sibling.lfs.sha256, sha256
        else:
            kind, expected, actual = "git blob sha1", sibling.blob_id, blob_sha1
        if expected is None:
            raise InputError(f"{where}: the hub at {endpoint} lists no hash for {name}")
        if expected != actual:
            _evict(cached[name])
            problems.append(
                f"{name}: {kind} expected {expected} (listed by the hub), got {actual} "
                f"({size} bytes)"
            )
            continue
        files[name] = {"sha256": sha256, "size": size}
    if problems:
        raise InputError(
            f"{where} at {commit}: downloaded file(s) do not match the hub's hashes: "
            + "; ".join(problems)
            + f". The bad copies were removed from the cache {cache}; run the download again, "
            "and if it keeps failing, check HF_ENDPOINT (a proxy or mirror altering files)"
        )
    for name in names:
        blob = Path(os.path.realpath(cached[name]))
        link_or_copy(blob, targets[name])
        if targets[name].stat().st_nlink > 1:
            # One inode for the cache's blob and the download: read-only, so that an edit in
            # place through either name cannot change the other (huggingface_hub only ever
            # renames and unlinks blobs, which the folder's permissions allow).
            mode = blob.stat().st_mode
            blob.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return {
        "source": where,
        "repo": repo_id,
        "requested_revision": revision,
        "revision": commit,
        "include": include,
        "exclude": exclude,
        "endpoint": endpoint,
        "files": files,
    }


def fetch_config(repo_id: str, revision: str | None) -> dict[str, Any]:
    """The repo's config.json at ``revision``, through the client's cache (the download finds
    it there): what ``onnxforge build hf://...`` chooses the family from, before the DAG runs."""
    import json

    from huggingface_hub import hf_hub_download

    where = _describe(repo_id, revision)
    check_revision(revision, where)
    try:
        path = hf_hub_download(
            repo_id, "config.json", revision=revision, cache_dir=_cache_dir(None),
            endpoint=_endpoint(),
        )  # fmt: skip
    except Exception as err:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        if isinstance(err, RemoteEntryNotFoundError):
            raise InputError(
                f"{where}: the repo has no config.json; onnxforge builds Hugging Face "
                "checkpoints (config.json and *.safetensors at the top of the repo)"
            ) from err
        mapped = _hub_error(err, where, repo_id, revision)
        if mapped is None:
            raise
        raise mapped from err
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as err:
        raise InputError(f"{where}: config.json is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(f"{where}: config.json holds a {type(config).__name__}, not an object")
    return config
