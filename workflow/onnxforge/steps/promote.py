"""Promote: publish only what passed its parity gate, with one manifest naming everything.

``results/release/{model}/{checkpoint}/{variant}/`` gets the ONNX files and the parity report,
and a manifest with every input hash (checkpoint files, staged parameters, ONNX files), the
hub revision, every package version of the lock, and the command that built it. The commands
(this one's and each step's) are in the manifest's ``volatile`` block: two clean builds of the
same release have the same manifest outside it.
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
    for name in paths.RELEASED:
        source = steps.export if name in (paths.ONNX_FILE, paths.DATA_FILE) else steps.parity
        outputs.link_or_copy(Path(source) / name, out_dir / name)
    # A KV export's ONNX Runtime GenAI files: the release folder is what GenAI runs.
    for name in _manifest(Path(steps.export)).get("export", {}).get("genai_files", []):
        outputs.link_or_copy(Path(steps.export) / name, out_dir / name)
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
            "outputs": outputs.hash_tree(out_dir),
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
