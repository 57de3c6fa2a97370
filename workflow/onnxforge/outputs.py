"""Outputs that appear only when complete, each with a manifest of what made it.

A step writes into ``<out>.tmp-<pid>`` next to its destination and renames it into place at
the end; an interrupted step leaves only a ``.tmp-`` directory, which the next run removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_TRACKED_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "jax2onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "orbax-checkpoint",
    "maxtext",
    "tensorflow-cpu",
    "safetensors",
    "numpy",
    "transformers",
    "torch",
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(directory: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of every file below ``directory``, by relative path (the manifest excluded);
    ``known`` hashes (computed while the files were written) are not read again."""
    directory, known = Path(directory), known or {}
    hashes = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_file() and path.name != MANIFEST:
            hashes[name] = known.get(name) or sha256_file(path)
    return hashes


def recorded_hashes(directory: Path) -> dict[str, str] | None:
    """The output hashes a previous step recorded for ``directory``: a checkpoint of tens of
    GB is then hashed once, when it is written, not again by every step that reads it."""
    manifest = Path(directory) / MANIFEST
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("outputs")


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (no second copy of the weights), else a copy."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def default_lock() -> Path:
    """The lock of the environment this runs in: set in images; a virtual environment built by
    `make` names its lock in ``<venv>/onnxforge-lock``; else the jax lock beside the package."""
    if "ONNXFORGE_LOCK" in os.environ:
        return Path(os.environ["ONNXFORGE_LOCK"])
    envs = Path(__file__).parents[2] / "envs"
    marker = Path(sys.prefix) / "onnxforge-lock"
    return envs / (marker.read_text().strip() if marker.exists() else "jax.lock.txt")


def environment() -> dict[str, Any]:
    """Where a step ran: the container image digest when there is one, else the lock's hash."""
    lock = default_lock()
    return {
        "image": os.environ.get("ONNXFORGE_IMAGE"),
        "lock": str(lock.name) if lock.exists() else None,
        "lock_path": str(lock) if lock.exists() else None,
        "lock_sha256": sha256_file(lock) if lock.exists() else None,
        "python": platform.python_version(),
        "packages": package_versions(),
    }


def write_json(path: Path, data: Any) -> None:
    """Write-then-rename for a single file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_manifest(
    directory: Path,
    step: str,
    inputs: dict[str, Path],
    extra: dict[str, Any] | None = None,
    known_outputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Record the step, the sha256 of every input file and output file, and the versions."""
    input_hashes = {}
    for label, path in inputs.items():
        path = Path(path)
        if path.is_dir():
            input_hashes[label] = recorded_hashes(path) or hash_tree(path)
        elif path.exists():
            input_hashes[label] = sha256_file(path)
    manifest = {
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "inputs": input_hashes,
        "outputs": hash_tree(directory, known_outputs),
        "environment": environment(),
        **(extra or {}),
    }
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


@contextlib.contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``destination`` only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    for stale in destination.parent.glob(f"{destination.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = destination.parent / f"{destination.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
