"""A Hugging Face checkpoint's config.json, read once and refused in one line when it is not a
JSON object (every step that reads one: stage, export's GenAI folder, parity, recognize)."""

from __future__ import annotations

import json
import math
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


def config_number(
    value: Any,
    key: str,
    source: str,
    kind: type = int,
    minimum: float | None = 1,
    above: float | None = None,
) -> int | float:
    """A config.json number as ``kind``, or one line naming ``key`` and what was expected:
    JSON numbers only (transformers refuses "300", and 300.0 for an int, at parity), finite,
    at least ``minimum`` and above ``above`` (a zero RoPE base or factor is a log of zero
    further on)."""
    hint = ""
    if isinstance(value, str):
        hint = " written without quotes"
    elif kind is int and isinstance(value, float):
        hint = " without a decimal point"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or hint or not math.isfinite(value):
        raise InputError(
            f"{source}: {key} is {value!r}; expected a number ({kind.__name__}){hint}. "
            "Fix config.json"
        )
    result = kind(value)
    if minimum is not None and result < minimum:
        raise InputError(
            f"{source}: {key} is {result}; expected at least {minimum}. Fix config.json"
        )
    if above is not None and result <= above:
        raise InputError(
            f"{source}: {key} is {result}; expected a number above {above}. Fix config.json"
        )
    return result
