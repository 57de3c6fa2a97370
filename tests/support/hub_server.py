"""A loopback stand-in for the Hugging Face Hub: what huggingface_hub 2.4.0 calls to download.

Serves ``{repo_id: {commit_sha: {path: bytes}}}`` plus ``{repo_id: {branch_or_tag: commit_sha}}``
on 127.0.0.1 (port 0), with the hub's headers:

- ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]``: model_info JSON (``sha``,
  ``siblings`` with ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``).
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, a quoted ``ETag`` (the git blob
  sha1, or for LFS files the pointer's blob sha1 with the content's sha256 in ``X-Linked-Etag``
  and its size in ``X-Linked-Size``), ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=N-``
  gets a 206 with ``Content-Range``.
- Errors as the hub sends them: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``, which ``hf_raise_for_status`` maps to the matching exception.

Faults for tests: ``corrupt`` (paths served with one byte flipped, same size), ``cut`` (path ->
how many GETs to cut after half the body, Content-Length still announcing the whole file),
``fail`` (path -> how many GETs answer 500). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".gguf")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    spec = "version https://git-lfs.github.com/spec/v1"
    return f"{spec}\noid sha256:{digest}\nsize {len(data)}\n".encode()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class HubServer:
    repos: dict[str, dict[str, dict[str, bytes]]]
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    cut: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def resolve(self, repo: str, rev: str) -> str | None:
        commits = self.repos[repo]
        return rev if rev in commits else self.refs.get(repo, {}).get(rev)

    def sibling(self, path: str, data: bytes) -> dict:
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
        if path.endswith(LFS_SUFFIXES):
            pointer = lfs_pointer(data)
            entry["blobId"] = git_blob_sha1(pointer)
            lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            entry["lfs"] = {**lfs, "pointerSize": len(pointer)}
        return entry

    def take(self, faults: dict[str, int], path: str) -> bool:
        with self._lock:
            if faults.get(path, 0) > 0:
                faults[path] -= 1
                return True
        return False


class _Handler(BaseHTTPRequestHandler):
    server_state: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
        payload = json.dumps({"error": code or "error"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _route(self, body: bool) -> None:
        hub = self.server_state
        hub.requests.append(
            Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        )
        path = urlsplit(self.path).path
        if match := re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path):
            repo, rev = match[1], unquote(match[2] or "main")
            self._model_info(hub, repo, rev)
        elif match := re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path):
            self._resolve(hub, match[1], unquote(match[2]), unquote(match[3]), body)
        else:
            self._error(404, None)

    def _model_info(self, hub: HubServer, repo: str, rev: str) -> None:
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound")
        commit = hub.resolve(repo, rev)
        if commit is None:
            return self._error(404, "RevisionNotFound")
        files = hub.repos[repo][commit]
        info = {
            "id": repo,
            "modelId": repo,
            "sha": commit,
            "private": False,
            "siblings": [hub.sibling(p, d) for p, d in sorted(files.items())],
        }
        payload = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _resolve(self, hub: HubServer, repo: str, rev: str, name: str, body: bool) -> None:
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound")
        commit = hub.resolve(repo, rev)
        if commit is None:
            return self._error(404, "RevisionNotFound")
        files = hub.repos[repo][commit]
        if name not in files:
            return self._error(404, "EntryNotFound", commit)
        if body and hub.take(hub.fail, name):
            return self._error(500, None)
        data = files[name]
        sibling = hub.sibling(name, data)
        if name in hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = min(int(match[1]), len(data))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{sibling["blobId"]}"')
        if "lfs" in sibling:
            self.send_header("X-Linked-Etag", f'"{sibling["lfs"]["sha256"]}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not body:
            self.end_headers()
            return
        if hub.take(hub.cut, name):
            self.end_headers()
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.end_headers()
        self.wfile.write(data[start:])
