"""Stage a checkpoint tensor by tensor: memory bounded by the largest tensor, not the model.

A family that maps checkpoint tensors onto its parameters one rule at a time (GPT-OSS) hands
its rules here; each parameter is made, shape-checked and queued for writing (Orbax, one
checkpoint per parameter) before the next is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import params_store, progress
from onnxforge.core.errors import InputError
from onnxforge.core.finite import check_finite
from onnxforge.core.safetensors_stream import CheckpointReader, TensorInfo
from onnxforge.families.base import Staged

ParamPath = tuple[str, ...]
# (checkpoint tensor names, {parameter path: transform(*tensors)}), each tensor read once.
Rule = tuple[tuple[str, ...], dict[ParamPath, Callable[..., np.ndarray]]]


FLOAT_KINDS = "f"  # numpy dtype kinds a weight may have (bfloat16 is kind "V": named below)


def check_tensor_set(
    reader: CheckpointReader,
    rules: list[Rule],
    may_skip: Callable[[str], bool] = lambda name: False,
    packed: Callable[[str], bool] = lambda name: False,
) -> None:
    """Before anything is written: every tensor the rules read is there and of a weight's
    dtype, and every tensor of the checkpoint is read by a rule (or ``may_skip``: the layers
    a truncated stage leaves out). ``packed`` tensors (MXFP4 blocks and scales) are uint8."""
    wanted = [name for sources, _ in rules for name in sources]
    missing = [name for name in wanted if name not in reader]
    if missing:
        raise InputError(
            f"{reader.directory}: tensor {missing[0]!r} is missing from the checkpoint "
            f"({len(missing)} missing of the {len(wanted)} config.json's model needs); is the "
            "checkpoint complete, and is config.json its own?"
        )
    unused = sorted(set(reader) - set(wanted))
    unused = [name for name in unused if not may_skip(name)]
    if unused:
        files = sorted({reader.info(name).file.name for name in unused})
        raise InputError(
            f"{reader.directory}: {files[0]}: tensor {unused[0]!r} is not part of the model "
            f"config.json describes ({len(unused)} such tensors"
            f"{', e.g. ' + repr(unused[1]) if len(unused) > 1 else ''}); does config.json "
            "(num_hidden_layers, tie_word_embeddings, ...) match the weights?"
        )
    for name in wanted:
        check_weight_dtype(reader.info(name), packed(name))


def check_weight_dtype(info: TensorInfo, packed: bool = False) -> None:
    """A weight is stored as a float (``packed``: MXFP4 blocks and scales, as uint8)."""
    if packed:
        ok, expected = info.dtype == np.uint8, "U8 (MXFP4 blocks and scales)"
    else:
        ok = info.dtype.kind in FLOAT_KINDS or info.dtype.name == "bfloat16"
        expected = "a floating-point dtype (F32, BF16, F16)"
    if not ok:
        raise InputError(
            f"{info.file}: tensor {info.name!r} is stored as {info.dtype}; expected {expected}. "
            "Was the checkpoint written by a converter that changed its dtypes?"
        )


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
            check_finite(f"{reader.info(sources[0]).file}: {shapes} -> {'/'.join(path)}", value)
            filled.add(path)
            yield path, value
            del value
    unfilled = sorted("/".join(p) for p in expected.keys() - filled)
    if unfilled:
        raise InputError(f"{reader.directory}: no checkpoint tensor fills {unfilled[:5]}")


def _counting(rules: list[Rule], reader: CheckpointReader, read: progress.Phase) -> Iterator[Rule]:
    """The rules, each counted as read (its tensors and their bytes) when the next is asked
    for: by then its parameters are made and queued for writing."""
    previous = None
    for rule in rules:
        if previous is not None:
            read.advance(sum(reader.info(n).nbytes for n in previous[0]), items=len(previous[0]))
        yield rule
        previous = rule
    if previous is not None:
        read.advance(sum(reader.info(n).nbytes for n in previous[0]), items=len(previous[0]))


def write_params(
    reader: CheckpointReader,
    rules: Iterable[Rule],
    expected: dict[ParamPath, tuple[int, ...]],
    params_dir: Path,
) -> Staged:
    """Write every parameter under ``params_dir``; the sha256 of each file written, by path
    relative to ``params_dir``'s parent (hashed as written: the files need not be read again),
    and each parameter's value digest, by name. Call ``check_tensor_set`` first."""
    rules = list(rules)
    tensors = [name for sources, _ in rules for name in sources]
    total = sum(reader.info(name).nbytes for name in tensors)
    with (
        progress.phase("tensors", total, items=len(tensors), item="tensors") as read,
        params_store.StreamingWriter(params_dir) as writer,
    ):
        rules_read = _counting(rules, reader, read)
        for path, value in staged_params(reader, rules_read, expected):
            writer.write(path, value)
            del value  # not held while the next parameter is made
    prefix = Path(params_dir).name
    return Staged(
        files={f"{prefix}/{name}": digest for name, digest in writer.hashes.items()},
        values=dict(sorted(writer.values.items())),
    )


def check_checkpoint_values(checkpoint_dir: Path, num_layers: int | None = None) -> int:
    """Every tensor of the checkpoint's ``*.safetensors`` read once, before a converter that is
    not ours (MaxText's) sees them: headers against the spec (a truncated file is named), and
    every tensor a float (an integer weight refused, naming it) and finite (a NaN or infinity
    is refused naming the tensor and its first index, which MaxText's converters would carry
    into the staged weights). One tensor in memory at a time. With ``num_layers`` (the layers
    config.json says the files hold), a tensor of a layer past them is refused too: a converter
    that maps by the config would drop it, and the release would be another model than the
    checkpoint. Returns the number of tensors checked."""
    reader = CheckpointReader(checkpoint_dir, finite=True)
    names = list(reader)
    for name in names:  # MaxText's converters would cast an integer weight to float silently
        check_weight_dtype(reader.info(name))
    if num_layers is not None:
        for name in names:
            layer = re.match(r"(?:model\.)?(?:language_model\.)?layers\.(\d+)\.", name)
            if layer and int(layer.group(1)) >= num_layers:
                raise InputError(
                    f"{checkpoint_dir}: tensor {name!r} is of layer {layer.group(1)}, but "
                    f"config.json's num_hidden_layers says the files hold {num_layers}: the "
                    "weights and the config are of different models. Fix config.json"
                )
    with progress.phase("check values (finite)", items=len(names), item="tensors") as checked:
        for name in names:
            reader.read(name)  # raises on the first non-finite value
            checked.advance(items=1)
    return len(names)
