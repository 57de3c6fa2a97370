"""A config's failure as its row's one-line error: an exception, an export that failed with
both shapes, failed parity gates, or a worker process that timed out or crashed."""

from __future__ import annotations

import re

ERROR_CHARS = 160


class Recorded(Exception):
    """An error whose message is already a row's short line."""


def short_error(exc: BaseException) -> str:
    """``Type: message`` on one line, without temporary paths, at most ERROR_CHARS long."""
    if isinstance(exc, Recorded):
        return str(exc)[:ERROR_CHARS]
    message = " ".join(str(exc).split())
    message = re.sub(r"Load model from \S+ failed: ?", "", message)
    message = re.sub(r"/tmp/\S*/(model\.onnx)", r"\1", message)
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def export_error(symbolic: str, fixed: str) -> str:
    """One line for an export that failed with symbolic and with fixed shapes."""
    fixed_type = fixed.split(":", 1)[0]
    suffix = " (fixed shape too)" if fixed == symbolic else f" (fixed shape: {fixed_type})"
    head = symbolic.removesuffix("…")
    if len(head) + len(suffix) > ERROR_CHARS:
        head = head[: ERROR_CHARS - len(suffix) - 1] + "…"
    return head + suffix


def parity_error(failures: list[str]) -> str:
    """One line for the failed gates (``metrics.check_gates``' sentences), each named once."""
    return f"parity: {'; '.join(dict.fromkeys(failures))}"[:ERROR_CHARS]


def process_error(code: int | None, timeout: float, stage: str | None, log_tail: str) -> str:
    """One line for a worker that timed out (``code`` None) or exited with ``code`` in
    ``stage`` without recording an error; ``log_tail`` is the last line of its log."""
    if code is None:
        return f"Timeout: no result after {timeout:g} s (in stage {stage})"
    return f"process exited with {code} in stage {stage}: {log_tail}"[:ERROR_CHARS]
