"""Stage a checkpoint tensor by tensor: memory bounded by the largest tensor, not the model.

A family that maps checkpoint tensors onto its parameters one rule at a time (GPT-OSS) hands
its rules here; each parameter is made, shape-checked and queued for writing (Orbax, one
checkpoint per parameter) before the next is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import params_store
from onnxforge.errors import InputError
from onnxforge.safetensors_stream import CheckpointReader

ParamPath = tuple[str, ...]
# (checkpoint tensor names, {parameter path: transform(*tensors)}), each tensor read once.
Rule = tuple[tuple[str, ...], dict[ParamPath, Callable[..., np.ndarray]]]


def staged_params(
    reader: CheckpointReader, rules: Iterable[Rule], expected: dict[ParamPath, tuple[int, ...]]
) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """Every parameter, one at a time, filled from the checkpoint and shape-checked."""
    filled: set[ParamPath] = set()
    for sources, targets in rules:
        tensors: list[Any] = [reader.tensor(name) for name in sources]
        shapes = ", ".join(f"{n!r} {t.shape}" for n, t in zip(sources, tensors, strict=True))
        for index, (path, transform) in enumerate(targets.items()):
            try:
                value = transform(*tensors)
            except ValueError as err:  # a transform that cannot use these tensors
                raise InputError(f"{reader.directory}: tensors {list(sources)}: {err}") from err
            if index == len(targets) - 1:
                tensors = []  # free the source before the value is written
            want_shape = expected[path]
            if value.shape != want_shape:
                raise InputError(
                    f"{reader.info(sources[0]).file}: tensor {shapes} gives {value.shape} for "
                    f"{'/'.join(path)}; the model built from config.json expects {want_shape}. "
                    "Does config.json match the weights?"
                )
            filled.add(path)
            yield path, value
            del value
    unfilled = sorted("/".join(p) for p in expected.keys() - filled)
    if unfilled:
        raise InputError(f"{reader.directory}: no checkpoint tensor fills {unfilled[:5]}")


def write_params(
    reader: CheckpointReader,
    rules: Iterable[Rule],
    expected: dict[ParamPath, tuple[int, ...]],
    params_dir: Path,
) -> dict[str, str]:
    """Write every parameter under ``params_dir``; the sha256 of each file written, by path
    relative to ``params_dir``'s parent (hashed as written: the files need not be read again)."""
    with params_store.StreamingWriter(params_dir) as writer:
        for path, value in staged_params(reader, rules, expected):
            writer.write(path, value)
            del value  # not held while the next parameter is made
    return {f"{Path(params_dir).name}/{name}": digest for name, digest in writer.hashes.items()}
