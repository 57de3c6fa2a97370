"""Download: a checkpoint source -> a local directory of real checkpoint files.

Sources:
- ``hf://org/repo@revision``: the Hugging Face Hub through its own client (see ``hub.py``),
  pinned to a commit, with include/exclude patterns from the catalog.
- ``synthetic://<family>?seed=N&key=value``: a tiny checkpoint written by transformers itself
  from the family's tiny config (keys override it), deterministic for a seed.
- ``file:///abs/dir`` or a plain path: a local Hugging Face checkpoint directory, copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

from onnxforge.errors import InputError
from onnxforge.families import get_family
from onnxforge.outputs import link_or_copy

SCHEMES = ("hf", "synthetic", "file")


@dataclass(frozen=True)
class Source:
    scheme: str
    location: str  # family for synthetic, directory for file
    options: dict[str, Any] = field(default_factory=dict)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


_HF_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def parse_source(uri: str) -> Source:
    parsed = urlparse(uri)
    if parsed.scheme == "hf":
        # Split by hand: a revision may hold what a URL parser takes for a query or fragment.
        repo, at, revision = uri[len("hf://") :].partition("@")
        if not _HF_REPO.fullmatch(repo):
            raise InputError(f"source {uri!r}: expected hf://org/repo[@revision]")
        if at:
            from onnxforge.hub import check_revision

            check_revision(revision, f"source {uri!r}")
        return Source("hf", repo, {"revision": revision or None})
    if parsed.scheme == "synthetic":
        return Source(
            "synthetic", parsed.netloc, {k: _number(v) for k, v in parse_qsl(parsed.query)}
        )
    if parsed.scheme in ("file", ""):
        return Source("file", parsed.path if parsed.scheme else uri)
    raise InputError(
        f"source {uri!r}: unsupported scheme {parsed.scheme!r}; expected one of "
        f"{', '.join(s + '://' for s in SCHEMES)} or a local directory"
    )


def download(
    uri: str,
    out_dir: Path,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> dict[str, Any]:
    """Fill ``out_dir`` with the checkpoint's files; return what the manifest should record."""
    source = parse_source(uri)
    if source.scheme == "hf":
        from onnxforge.hub import download_hf

        record = download_hf(
            source.location,
            source.options["revision"],
            out_dir,
            include=include,
            exclude=exclude,
            cache_dir=None,
        )
        return {**record, "source": uri}
    if source.scheme == "synthetic":
        options = dict(source.options)
        seed = int(options.pop("seed", 0))
        get_family(source.location).synthesize(out_dir, seed, options)
        return {"source": uri, "revision": f"seed={seed}"}
    directory = Path(source.location)
    if not directory.is_dir():
        raise InputError(f"source {uri!r}: {directory} is not a directory")
    files = [p for p in sorted(directory.rglob("*")) if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        raise InputError(f"source {uri!r}: {directory} holds no *.safetensors file")
    for path in files:
        link_or_copy(path, out_dir / path.relative_to(directory))
    return {"source": uri, "revision": None}
