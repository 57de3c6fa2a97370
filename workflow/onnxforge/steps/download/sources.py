"""Download: a checkpoint source -> a local directory of real checkpoint files.

Sources:
- ``hf://org/repo@revision``: the Hugging Face Hub through its own client (see ``hub.py``),
  pinned to a commit, with include/exclude patterns from the catalog.
- ``synthetic://<family>?seed=N&key=value``: a tiny checkpoint written by transformers itself
  from the family's tiny config (keys override it), deterministic for a seed.
- ``file:///abs/dir`` or a plain path: a local Hugging Face checkpoint directory, copied (see
  ``local_files``): a Hugging Face cache snapshot works as it is. Its files are hashed as they
  are copied; ``verify_download`` and ``source_state`` hash them again at every run, so that a
  changed source is downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

from onnxforge.core import progress
from onnxforge.core.errors import InputError
from onnxforge.core.outputs import MANIFEST, copy_file, sha256_file

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
            from onnxforge.steps.download.hub import check_revision

            check_revision(revision, f"source {uri!r}")
        return Source("hf", repo, {"revision": revision or None})
    if parsed.scheme == "synthetic":
        return Source(
            "synthetic", parsed.netloc, {k: _number(v) for k, v in parse_qsl(parsed.query)}
        )
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise InputError(
            f"source {uri!r}: file:// takes an absolute path, not a host or a relative path "
            f"({parsed.netloc!r} would be dropped); write file:///absolute/folder (three "
            "slashes) or the plain path"
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
        from onnxforge.steps.download.hub import download_hf

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
        from onnxforge.families import get_family

        options = dict(source.options)
        seed = options.pop("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError(
                f"source {uri!r}: seed is {seed!r}; expected a whole number >= 0, e.g. seed=0"
            )
        with progress.phase("synthesize"):
            get_family(source.location).synthesize(out_dir, seed, options)
        return {"source": uri, "revision": f"seed={seed}"}
    files = local_files(uri, out_dir)
    record = {}
    sizes = {name: path.stat().st_size for name, path in files.items()}
    with progress.phase("copy", sum(sizes.values()), items=len(files), item="files") as copied:
        for name, path in files.items():
            record[name] = {"sha256": copy_file(path, Path(out_dir) / name), "size": sizes[name]}
            copied.advance(sizes[name], items=1)
    return {"source": uri, "revision": None, "files": record}


class SourceChanged(InputError):
    """A file:// source no longer holds what was downloaded from it."""


# Top-level folders of a local checkpoint that are never copied: git's own objects (with LFS,
# a second copy of the weights) and huggingface_hub's download metadata of a --local-dir.
_SKIPPED_FOLDERS = (".git", ".cache")


def _hf_cache_blobs(directory: Path) -> Path | None:
    """The ``blobs/`` folder of the Hugging Face cache repo whose snapshot holds ``directory``
    (``<cache>/models--org--name/snapshots/<commit>/...``), where its snapshot links point."""
    for folder in (directory, *directory.parents):
        if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
            return folder.parent.parent / "blobs"
    return None


def local_files(uri: str, out_dir: Path | None = None) -> dict[str, Path]:
    """The files of a file:// source, by relative path, each the real file (links resolved).

    A link is followed only to a file inside the source folder, or inside the ``blobs/`` of
    the Hugging Face cache repo whose snapshot the folder is; any other link, a broken one or
    one to a folder is refused. A top-level manifest.json (a previous download's) and the
    folders ``.git`` and ``.cache`` are left out."""
    source = parse_source(uri)
    if source.scheme != "file":
        raise InputError(f"source {uri!r}: not a local folder")
    directory = Path(source.location)
    if not directory.is_dir():
        raise InputError(
            f"source {uri!r}: {directory} is not a directory; point file:// at the folder "
            "that holds the checkpoint (config.json and *.safetensors)"
        )
    root = directory.resolve()
    if out_dir is not None and Path(out_dir).resolve().is_relative_to(root):
        raise InputError(
            f"source {uri!r}: the download folder {out_dir} is inside the source {directory}; "
            "point the source at the checkpoint folder itself, outside results/"
        )
    blobs = _hf_cache_blobs(root)
    allowed = (root, blobs) if blobs else (root,)
    where = f"source {uri!r}"
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        relative = here.relative_to(root)
        if relative == Path("."):
            subfolders[:] = [d for d in subfolders if d not in _SKIPPED_FOLDERS]
            names = [n for n in names if n != MANIFEST]
        for name in sorted(d for d in subfolders if (here / d).is_symlink()):
            raise InputError(
                f"{where}: {(relative / name).as_posix()} is a link to a folder "
                f"({os.path.realpath(here / name)}); onnxforge copies files, not linked "
                "folders: put the folder itself there"
            )
        for name in sorted(names):
            path, label = here / name, (relative / name).as_posix()
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.exists():
                    raise InputError(
                        f"{where}: {label} is a broken link (to {os.readlink(path)}); restore "
                        "what it points to or remove it"
                    )
                if target.is_dir():
                    raise InputError(
                        f"{where}: {label} is a link to a folder ({target}); onnxforge "
                        "copies files, not linked folders: put the folder itself there"
                    )
                if not any(target.is_relative_to(a) for a in allowed):
                    raise InputError(
                        f"{where}: {label} is a link to {target}, outside {directory}; links "
                        "are followed only within the folder (and a Hugging Face cache "
                        "snapshot's into its own blobs/): copy the file in, or point the "
                        "source at the folder that holds it"
                    )
                path = target
            if not path.is_file():
                raise InputError(f"{where}: {label} is not a regular file; remove it")
            files[label] = path
    if not any(name.endswith(".safetensors") for name in files):
        raise InputError(
            f"source {uri!r}: {directory} holds no *.safetensors file; point file:// at a "
            "Hugging Face checkpoint folder (config.json and *.safetensors)"
        )
    return dict(sorted(files.items()))


def _local_hashes(uri: str) -> dict[str, str]:
    return {name: sha256_file(path) for name, path in local_files(uri).items()}


def source_state(uri: str) -> str:
    """What a file:// source holds now, as one sha256 over its files' names and hashes
    (hashed again each call); empty for other sources, which are pinned by their URI. For a
    rule's params: the download runs again when the value changes."""
    if parse_source(uri).scheme != "file":
        return ""
    return hashlib.sha256(json.dumps(_local_hashes(uri), sort_keys=True).encode()).hexdigest()


def _changes(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    changes = [f"{n} (removed)" for n in sorted(recorded.keys() - current.keys())]
    changes += [f"{n} (added)" for n in sorted(current.keys() - recorded.keys())]
    changes += [
        f"{n} (sha256 {recorded[n][:12]}... now {current[n][:12]}...)"
        for n in sorted(recorded.keys() & current.keys())
        if recorded[n] != current[n]
    ]
    return changes


def verify_download(download_dir: Path) -> None:
    """Hash the file:// sources of a finished download again (its own and its extras') and
    raise ``SourceChanged`` naming each file added, removed or changed since; nothing for
    other sources (a hub commit or a seed does not change) or a download not made yet."""
    download_dir = Path(download_dir)
    manifest_path = download_dir / MANIFEST
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text())
    records = [("", manifest)] + [
        (f"{name}/", extra) for name, extra in sorted((manifest.get("extra") or {}).items())
    ]
    for prefix, record in records:
        uri = record.get("source")
        if not uri or parse_source(uri).scheme != "file":
            continue
        if "files" in record:
            recorded = {name: f["sha256"] for name, f in record["files"].items()}
        else:  # written before downloads recorded their files: what the manifest hashed
            outputs = manifest.get("outputs", {})
            recorded = {n[len(prefix) :]: h for n, h in outputs.items() if n.startswith(prefix)}
        changes = _changes(recorded, _local_hashes(uri))
        if changes:
            raise SourceChanged(
                f"source {uri!r} changed since it was downloaded to {download_dir}: "
                + ", ".join(changes)
                + "; download it again (remove the download folder, or let the rule rerun it)"
            )
