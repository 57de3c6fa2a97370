"""MaxText checkpoints on disk: MaxText's own saver and reader, and the tree shapes they use.

A stage holds ``checkpoint/0/items``, an unscanned MaxText Orbax checkpoint (OCDBT, zarr3)
written by MaxText's ``save_weights_to_checkpoint``; converters that produce MaxText's scanned
layout are unrolled first, as its ``generate_param_only_checkpoint force_unroll=true`` does.

Staging streams: a converter may give ``Deferred`` leaves (a parameter not read yet), and
``save`` reads, writes and drops one parameter at a time, so a stage holds about one
parameter beside MaxText's model (not the whole checkpoint, nor two copies of it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core.errors import InputError

SCANNED = "layers"

# The variable collections a stage holds, all under ``params``: nnx.Param's, and DeepSeek V3's
# routing bias (MaxText's MoEBiasVar). MaxText's own restore reads the bias there too
# (checkpointing._alias_legacy_collections), and its mapping names it so.
VARIABLE_COLLECTIONS = ("params", "MoEBiasVar")


class Deferred(np.ndarray):
    """A parameter not read yet: a zero-stride view that carries its shape and dtype (all
    the shape check and Orbax's write plan look at) and ``loader``, which reads it."""

    loader: Callable[[], Any]
    name: str

    def __deepcopy__(self, memo):  # Orbax copies values before writing: never the real bytes
        return self


def deferred(loader: Callable[[], Any], shape: tuple[int, ...], dtype: Any, name: str):
    view = np.broadcast_to(np.zeros((), dtype), tuple(shape)).view(Deferred)
    view.loader, view.name = loader, name
    return view


def materialize(value: Any) -> np.ndarray:
    """A leaf's values: a ``Deferred`` one read now (and checked against its declared shape)."""
    if not isinstance(value, Deferred):
        return value
    array = np.asarray(value.loader(), dtype=value.dtype)
    if array.shape != value.shape:
        raise InputError(
            f"MaxText parameter {value.name}: the converter gave shape {array.shape}, "
            f"its model declares {value.shape}. Does config.json match the weights?"
        )
    return array


def unroll(weights: dict[str, Any], num_layers: int, scan_axis: int = 1) -> dict[str, Any]:
    """decoder/layers/... stacked on ``scan_axis`` -> decoder/layers_0 ... layers_{n-1}."""
    import jax

    stacked = weights["decoder"].pop(SCANNED)
    for index in range(num_layers):
        weights["decoder"][f"{SCANNED}_{index}"] = jax.tree_util.tree_map(
            lambda array, i=index: np.ascontiguousarray(np.take(array, i, axis=scan_axis)),
            stacked,
        )
    return weights


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def save(weights: dict[str, Any], directory: Path) -> None:
    """MaxText's own saver: an Orbax checkpoint at ``directory/0/items`` (OCDBT, zarr3),
    written one parameter at a time (``Deferred`` ones read just before their write)."""
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    with _one_write_at_a_time():
        save_weights_to_checkpoint(str(Path(directory).resolve()), weights, 1, True, True)


@contextlib.contextmanager
def _one_write_at_a_time():
    """Orbax's numpy handler (which its v1 saver delegates to) deep-copies every value, then
    starts every write at once: the whole checkpoint in memory, twice. For the save, it writes
    each value alone (its own write path, one value at a time), reading a ``Deferred`` one
    first and dropping it after. The save is synchronous: no value changes while it runs."""
    from unittest import mock

    from orbax.checkpoint._src.futures import future
    from orbax.checkpoint._src.serialization import type_handlers

    handler = type_handlers.NumpyHandler
    write_values = handler._background_serialize

    async def write_one_by_one(self, values, infos, args):
        for index, (info, arg) in enumerate(zip(infos, args, strict=True)):
            await write_values(self, [materialize(values[index])], [info], [arg])
            values[index] = None  # this call's reference: the array goes with its write

    async def serialize(self, values, infos, args=None):
        args = args or [type_handlers.types.SaveArgs()] * len(values)
        writes = write_one_by_one(self, list(values), infos, args)
        return [future.CommitFutureAwaitingContractedSignals(writes, name="np_type_handler")]

    with mock.patch.object(handler, "serialize", serialize):
        yield


def _items(directory: Path) -> Path:
    items = Path(directory).resolve() / "0" / "items"
    if not items.exists():
        raise InputError(f"{directory}: no MaxText checkpoint (0/items); re-run stage")
    return items


def load(directory: Path) -> dict[str, Any]:
    """The parameter tree a MaxText checkpoint holds (``params.params`` of its train state)."""
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer().restore(str(_items(directory)))["params"]["params"]


def load_each(directory: Path):
    """``(path, values)`` for each parameter of the checkpoint, read one at a time (Orbax's
    partial restore), in sorted order: never the whole tree in memory."""
    import orbax.checkpoint as ocp

    items = _items(directory)
    checkpointer = ocp.PyTreeCheckpointer()
    stored = flatten(checkpointer.metadata(str(items)).item_metadata.tree["params"]["params"])
    for path in sorted(stored):
        item: dict[str, Any] = {}
        node = item.setdefault("params", {}).setdefault("params", {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = stored[path]  # its metadata: restored as numpy, in the stored dtype
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        args = ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
        restored = checkpointer.restore(str(items), args=args)["params"]["params"]
        for key in path:
            restored = restored[key]
        yield path, np.asarray(restored)


def value_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """Each parameter's ``outputs.value_digest`` (dtype, shape, sha256 of its values), read
    back one at a time from the checkpoint at ``directory``, by its path in the tree
    (``decoder/...``)."""
    from onnxforge.core.outputs import value_digest

    return {"/".join(path): value_digest(values) for path, values in load_each(directory)}
