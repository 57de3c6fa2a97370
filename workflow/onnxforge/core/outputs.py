"""Outputs that appear only when complete, each with a manifest of what made it.

A step writes into ``<out>.tmp-<pid>`` next to its destination and renames it into place at
the end; an interrupted step leaves only a ``.tmp-`` directory, which the next run removes
(unless the process it names still runs: a live concurrent run keeps its work).

A manifest keeps what differs between two clean builds of the same thing (when, by which
command line, from which checkout, how long it took) in its ``volatile`` block: the rest
(``stable_view``) is byte for byte the same.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxforge.core import checkout, processes

MANIFEST = "manifest.json"
# What Ctrl-C prints (a step's, `onnxforge build`'s): what was complete is kept, the rest redone.
INTERRUPTED = "interrupted; run the same command again to resume"
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


def value_digest(value: Any) -> dict[str, Any]:
    """An array's identity apart from any file format: dtype, shape and the sha256 of its
    values' bytes (C order, little-endian). Two stages that hold the same values have the
    same digests whatever their files look like."""
    import numpy as np

    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    flat = np.ascontiguousarray(array).reshape(-1)  # a copy only where not C-contiguous
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "sha256": hashlib.sha256(flat.view(np.uint8)).hexdigest(),
    }


def recorded_hashes(directory: Path) -> dict[str, str] | None:
    """The output hashes a previous step recorded for ``directory``: a checkpoint of tens of
    GB is then hashed once, when it is written, not again by every step that reads it."""
    manifest = Path(directory) / MANIFEST
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("outputs")


_FICLONE = 0x40049409  # Linux ioctl: the target shares the source's blocks, copy on write


def copy_file(source: Path, target: Path, chunk: int = 1 << 22) -> str:
    """An independent copy of ``source`` at ``target``; returns its sha256.

    For files a user may edit later (a local checkpoint): a hard link would carry an in-place
    edit (safetensors' ``save_file`` rewrites the same inode) into a finished artifact whose
    manifest no longer describes it. Where the file system can (btrfs, XFS, ...) the copy is a
    reflink, which costs no second copy of the blocks; else the bytes are copied, and hashed
    on the way (the hash is of what was written)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with Path(source).open("rb") as src, target.open("wb") as dst:
        try:
            import fcntl

            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        except (ImportError, OSError):
            while block := src.read(chunk):
                digest.update(block)
                dst.write(block)
            return digest.hexdigest()
    return sha256_file(target, chunk)


def free_space_for(destination: Path, needed: int, what: str) -> None:
    """Refuse, before anything is written, to write ``needed`` bytes at ``destination`` (a path
    that may not exist yet) when its file system has less free: an ENOSPC naming ``what`` (the
    file or folder to be written), rather than a disk filled half way."""
    probe = Path(destination)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: it needs {_size(needed)}, the file system of {probe} "
            f"has {_size(free)} free",
            str(what),
        )


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def describe_os_error(err: OSError, where: Path | str | None = None) -> str:
    """One line for a failed file operation: the file (``where`` when the error names none:
    a ``write`` that hit a full disk names no file), what happened, and what to do."""
    name = err.filename if err.filename else where
    prefix = f"{name}: " if name else ""
    if err.errno == errno.ENOSPC:
        remedy = "free some space (or point results/ elsewhere) and run again"
    elif err.errno == errno.EROFS:
        remedy = (
            "the file system is read-only: run from a writable folder (results/ is written "
            "in the current directory) or mount it writable"
        )
    elif err.errno in (errno.EACCES, errno.EPERM):
        remedy = "check the path and its permissions (results/ must be writable), then run again"
    else:
        remedy = "check the path and its permissions, then run again"
    return f"{prefix}{err.strerror or err}; {remedy}"


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (no second copy of the weights), else a copy.
    Only for files nothing edits in place (the hub cache's blobs, this project's own outputs);
    see ``copy_file`` for the others."""
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
    marker = Path(sys.prefix) / "onnxforge-lock"
    return checkout.ENVS / (marker.read_text().strip() if marker.exists() else "jax.lock.txt")


def environment() -> dict[str, Any]:
    """Where a step ran: the container image digest when there is one, else the lock's hash.
    (Where the lock lies on this machine is volatile: see ``write_manifest``.)"""
    lock = default_lock()
    return {
        "image": os.environ.get("ONNXFORGE_IMAGE"),
        "lock": str(lock.name) if lock.exists() else None,
        "lock_sha256": sha256_file(lock) if lock.exists() else None,
        "python": platform.python_version(),
        "packages": package_versions(),
    }


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write-then-rename for a single file (a killed writer's leftover is removed)."""
    path = Path(path)
    remove_stale_temporaries(path.with_name(f".{path.name}"))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(_dumps(data))
    os.replace(tmp, path)


VOLATILE = "volatile"


def volatile_fields(**more: Any) -> dict[str, Any]:
    """What differs between two clean builds of the same thing: when, the command line, where
    the lock lies on this machine, and ``more`` (timings, say)."""
    lock = default_lock()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": list(sys.argv),
        "lock_path": str(lock) if lock.exists() else None,
        **more,
    }


def stable_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without its volatile block: equal for two clean builds of the same thing."""
    return {key: value for key, value in manifest.items() if key != VOLATILE}


def stable_text(text: str) -> str:
    """A manifest file's text without its volatile block, as ``write_json`` would write it."""
    return _dumps(stable_view(json.loads(text)))


def volatile_field(manifest: dict[str, Any], key: str, default: Any = None) -> Any:
    """A volatile field (``command``, ``created``, ``lock_path``...), also from manifests
    written before the volatile block existed, which kept them at the top level."""
    block = manifest.get(VOLATILE) or {}
    if key in block:
        return block[key]
    return manifest.get(key, manifest.get("environment", {}).get(key, default))


def write_manifest(
    directory: Path,
    step: str,
    inputs: dict[str, Path],
    extra: dict[str, Any] | None = None,
    known_outputs: dict[str, str] | None = None,
    volatile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the step, the sha256 of every input file and output file, and the versions;
    ``volatile`` (timings, say) joins the creation time and command line in the volatile
    block, apart from everything that two clean builds must agree on."""
    input_hashes = {}
    for label, path in inputs.items():
        path = Path(path)
        if path.is_dir():
            input_hashes[label] = recorded_hashes(path) or hash_tree(path)
        elif path.exists():
            input_hashes[label] = sha256_file(path)
    manifest = {
        "step": step,
        "inputs": input_hashes,
        "outputs": hash_tree(directory, known_outputs),
        "environment": environment(),
        **(extra or {}),
        VOLATILE: volatile_fields(**(volatile or {})),
    }
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def _renamer(tmp: Path, destination: Path):
    """Text with every mention of ``tmp`` (as given, absolute or resolved: its last part is
    enough) replaced by ``destination``'s."""
    pattern = re.compile(re.escape(tmp.name) + r"(?!\d)")  # not another pid that starts alike

    def rename(text: str) -> str:
        return pattern.sub(lambda _: destination.name, text)

    return rename


def rename_in_error(err: BaseException, tmp: Path, destination: Path) -> None:
    """Make ``err`` name ``destination`` wherever it names the temporary ``tmp``, in place (the
    temporary is gone by the time anyone reads the message): an ``InputError``'s message, an
    ``OSError``'s file names; other exceptions are left as they are."""
    from onnxforge.core.errors import InputError

    rename = _renamer(tmp, destination)
    if isinstance(err, InputError):
        err.args = tuple(rename(a) if isinstance(a, str) else a for a in err.args)
    elif isinstance(err, OSError):
        for attribute in ("filename", "filename2"):
            if isinstance(value := getattr(err, attribute, None), str):
                setattr(err, attribute, rename(value))


_TMP_PID = re.compile(r"\.tmp-(\d+)(?:\.old)?$")


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that ``tmp`` (``<name>.tmp-<pid>[.old]``) names may still use it:
    it runs, is not this process, and (where ``/proc`` tells) runs onnxforge."""
    match = _TMP_PID.search(tmp.name)
    if match is None:
        return False
    pid = int(match[1])
    if pid == os.getpid() or not processes.alive(pid):
        return False
    # `python -m onnxforge STEP` or the `onnxforge` script; anything else reused the pid
    argv = processes.command_line(pid)
    return argv is None or any(Path(arg).name == "onnxforge" for arg in argv)


def remove_stale_temporaries(destination: Path) -> list[Path]:
    """Remove ``<destination>.tmp-<pid>`` leftovers of writers that no longer run; those of a
    live writer (a concurrent run on the same output) stay. Returns what was removed."""
    destination = Path(destination)
    removed = []
    for stale in sorted(destination.parent.glob(f"{glob.escape(destination.name)}.tmp-*")):
        if _writer_alive(stale):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def remove_tree(path: Path) -> None:
    """Remove a finished output so that nothing half-removed is left: renamed to a temporary
    first (which a later run removes if this is cut short), then deleted."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    os.replace(path, tmp)
    shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``destination`` only on success.

    An ``InputError`` (or ``OSError``) raised inside names ``destination`` instead of the
    temporary, which is removed before the message is read."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    tmp = destination.parent / f"{destination.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        try:
            yield tmp
        except Exception as err:
            rename_in_error(err, tmp, destination)
            raise
        if destination.exists():
            # Moved aside, not removed in place: a kill meanwhile leaves no half-removed
            # destination, only a temporary the next run removes.
            old = destination.with_name(f"{destination.name}.tmp-{os.getpid()}.old")
            os.replace(destination, old)
            os.replace(tmp, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
