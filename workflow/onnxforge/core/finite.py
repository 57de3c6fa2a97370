"""Non-finite values found without a tensor's worth of memory: what stage refuses in weights
and what parity records (and fails) in compared tensors.

A NaN or an infinity never passes: the position and count of the first non-finite values are
reported, naming the tensor."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxforge.core.errors import InputError

_CHUNK = 1 << 20  # elements checked at a time: the mask never costs a tensor's worth of memory


def find_nonfinite(array: Any, chunk: int = _CHUNK) -> dict[str, Any] | None:
    """None when every value is finite; else their count, the first one's index and value.

    Integer and boolean arrays are finite by construction; floating ones (bfloat16 and the
    other ``ml_dtypes`` too) are scanned in slabs of rows of about ``chunk`` elements, so
    that neither the mask nor a strided array (a transpose) costs a tensor's worth of memory."""
    array = np.asarray(array)
    if array.dtype.kind in "biu" or array.size == 0:
        return None
    scalar = array.ndim == 0
    if scalar:
        array = array.reshape(1)
    rows = max(1, chunk // max(1, array[0].size))
    count, first = 0, None
    for start in range(0, array.shape[0], rows):
        bad = ~np.isfinite(array[start : start + rows])
        found = int(np.count_nonzero(bad))
        if found:
            count += found
            if first is None:
                local = np.unravel_index(int(bad.argmax()), bad.shape)
                first = (start + int(local[0]), *(int(i) for i in local[1:]))
    if first is None:
        return None
    index = [] if scalar else list(first)
    return {"count": count, "index": index, "value": str(float(array[first]))}


def nonfinite(reference: Any, candidate: Any) -> dict[str, Any]:
    """The non-finite values of one compared pair: ``count`` over both, and for each side
    None or its count, first index and value. Any count above 0 fails the gates."""
    sides = {"reference": find_nonfinite(reference), "candidate": find_nonfinite(candidate)}
    return {"count": sum(s["count"] for s in sides.values() if s), **sides}


def describe_nonfinite(record: dict[str, Any], input_name: str | None = None) -> str:
    """One sentence: where the first non-finite values are."""
    where = f" of input {input_name!r}" if input_name else ""
    parts = [
        f"{side}{where} has {found['count']} (first: {found['value']} at {found['index']})"
        for side in ("reference", "candidate")
        if (found := record.get(side))
    ]
    return f"{record['count']} non-finite value(s): " + "; ".join(parts)


def nonfinite_error(name: str, found: dict[str, Any], size: int) -> InputError:
    """The error for ``found`` (``find_nonfinite``'s) in ``size`` values of weights ``name``."""
    return InputError(
        f"{name}: {found['count']} of {size} values are not finite (first: {found['value']} "
        f"at {found['index']}); expected finite weights: the checkpoint is damaged or was "
        "saved from a diverged run. Download it again, or fix the weights where they are made"
    )


def check_finite(name: str, array: Any) -> None:
    """Refuse an array holding NaN or infinity, naming it (``name``: the file and tensor)."""
    if found := find_nonfinite(array):
        raise nonfinite_error(name, found, int(np.asarray(array).size))
