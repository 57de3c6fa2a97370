"""Parameter trees on disk (Orbax) and into NNX modules.

A staged checkpoint is a nested dict of arrays keyed like the module's state paths
(``layers/0/attention/q_kernel``), saved with Orbax. Loading checks every path and shape,
so a stage that does not fit the model fails loudly instead of exporting zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from onnxforge.errors import InputError

Path_ = tuple[str, ...]


def state_shapes(abstract_model: nnx.Module) -> dict[Path_, tuple[tuple[int, ...], Any]]:
    """Every parameter's path (as strings), shape and dtype, from an abstract module."""
    _, state = nnx.split(abstract_model)
    return {
        tuple(str(p) for p in path): (tuple(var.get_value().shape), var.get_value().dtype)
        for path, var in nnx.to_flat_state(state)
    }


def nest(flat: dict[Path_, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def flatten(tree: dict[str, Any], prefix: Path_ = ()) -> dict[Path_, Any]:
    flat: dict[Path_, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def save(flat: dict[Path_, np.ndarray], directory: Path) -> None:
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), nest(flat))


def load_into(abstract_model: nnx.Module, directory: Path, dtype: Any) -> nnx.Module:
    """A concrete module whose parameters come from the Orbax checkpoint, cast to ``dtype``."""
    directory = Path(directory).absolute()
    if not directory.exists():
        raise InputError(f"{directory}: staged parameters not found; run the stage step first")
    with ocp.PyTreeCheckpointer() as checkpointer:
        stored = flatten(checkpointer.restore(directory))
    graphdef, state = nnx.split(abstract_model)
    flat_state = nnx.to_flat_state(state)
    expected = {tuple(str(p) for p in path) for path, _ in flat_state}
    missing = sorted("/".join(p) for p in expected - stored.keys())
    extra = sorted("/".join(p) for p in stored.keys() - expected)
    if missing or extra:
        raise InputError(
            f"{directory}: staged parameters do not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}. Re-run stage."
        )
    leaves = []
    for path, var in flat_state:
        key = tuple(str(p) for p in path)
        value = stored[key]
        if tuple(value.shape) != tuple(var.get_value().shape):
            raise InputError(
                f"{directory}: parameter {'/'.join(key)} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(var.get_value().shape)}. Re-run stage."
            )
        leaves.append((path, var.replace(jnp.asarray(value, dtype=dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
