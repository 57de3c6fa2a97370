"""Promote: publish only what passed its parity gate, with one manifest naming everything.

``results/release/{model}/{checkpoint}/{variant}/`` gets the ONNX files and the parity report,
and a manifest with every input hash (checkpoint files, staged parameters, ONNX files), the
hub revision, every package version of the lock, and the command that built it. The commands
(this one's and each step's) are in the manifest's ``volatile`` block: two clean builds of the
same release have the same manifest outside it.

A release's files are copies (reflinks where the file system has them), never hard links of
the export's: a release is a set of plain files, which ``onnx.load`` opens (it refuses a
hard-linked model file) and which no later rebuild of the export can change. A release is
withdrawn (``withdraw``) as soon as a step it depends on starts again, and when its gate
fails: nothing is released that the current steps did not make and pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxforge.core import outputs, paths
from onnxforge.core.errors import InputError


@dataclass(frozen=True)
class StepDirs:
    """The folders of one target's steps (the promote rule's declared inputs)."""

    download: Path
    stage: Path
    export: Path
    parity: Path


def locked_packages(lock: Path) -> dict[str, str]:
    """``name==version`` pins of a pip-compile lock."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            pins[name.strip()] = rest.split()[0].rstrip("\\").strip()
    return pins


def _manifest(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / outputs.MANIFEST).read_text())


def promote(target: str, steps: StepDirs, passed: Path, out_dir: Path, command: str):
    verdict = json.loads(Path(passed).read_text())
    if verdict.get("status") != "PASS":
        raise InputError(f"{passed}: parity did not pass; nothing is promoted")
    copies = {
        name: Path(steps.export if name in (paths.ONNX_FILE, paths.DATA_FILE) else steps.parity)
        / name
        for name in paths.RELEASED
    }
    # A KV export's ONNX Runtime GenAI files: the release folder is what GenAI runs.
    for name in _manifest(Path(steps.export)).get("export", {}).get("genai_files", []):
        copies[name] = Path(steps.export) / name
    outputs.free_space_for(out_dir, sum(s.stat().st_size for s in copies.values()), out_dir)
    written = {name: outputs.copy_file(source, out_dir / name) for name, source in copies.items()}
    download, stage = _manifest(Path(steps.download)), _manifest(Path(steps.stage))
    export, parity = _manifest(Path(steps.export)), _manifest(Path(steps.parity))
    lock = Path(outputs.volatile_field(export, "lock_path") or outputs.default_lock())
    outputs.write_json(
        out_dir / outputs.MANIFEST,
        {
            "target": target,
            "status": "PASS",
            "source": download.get("source"),
            "revision": download.get("revision"),
            "inputs": {
                "checkpoint": download["outputs"],
                "stage": stage["outputs"],
                "onnx": export["outputs"],
                "parity_report": parity["outputs"],
            },
            "outputs": outputs.hash_tree(out_dir, written),
            "parity": verdict["summary"],
            "environment": export["environment"],
            "locked_packages": locked_packages(lock) if lock.exists() else None,
            outputs.VOLATILE: {
                "command": command,
                "steps": {
                    name: outputs.volatile_field(manifest, "command")
                    for name, manifest in (
                        ("download", download),
                        ("stage", stage),
                        ("export", export),
                        ("parity", parity),
                    )
                },
            },
        },
    )


def withdraw(release: Path) -> list[Path]:
    """Withdraw ``release``: a release folder (it holds a manifest), or a folder of them
    (``results/release/MODEL/CHECKPOINT``: every variant's). Each is moved aside whole, then
    removed (``outputs.remove_tree``), so no half-withdrawn release is ever seen; what an
    earlier withdrawal cut short left is removed as well. Returns the releases withdrawn."""
    release = Path(release)
    outputs.remove_stale_temporaries(release)  # a withdrawal cut short, say
    if not release.is_dir():
        return []
    if (release / outputs.MANIFEST).exists():
        found = [release]
    else:
        for child in release.iterdir():
            if ".tmp-" in child.name:
                outputs.remove_stale_temporaries(child.with_name(child.name.split(".tmp-")[0]))
        found = sorted(p for p in release.iterdir() if (p / outputs.MANIFEST).is_file())
    for folder in found:
        outputs.remove_tree(folder)
    return found
