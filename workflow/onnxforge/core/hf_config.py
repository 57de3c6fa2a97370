"""A Hugging Face checkpoint's config.json, read once and refused in one line when it is not a
JSON object (every step that reads one: stage, export's GenAI folder, parity, recognize)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxforge.core.errors import InputError


def read_config_json(directory: Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict, or an error naming the file."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise InputError(f"{path}: missing; a checkpoint needs its config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config
