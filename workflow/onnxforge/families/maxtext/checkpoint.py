"""MaxText checkpoints on disk: MaxText's own saver and reader, and the tree shapes they use.

A stage holds ``checkpoint/0/items``, an unscanned MaxText Orbax checkpoint (OCDBT, zarr3)
written by MaxText's ``save_weights_to_checkpoint``; converters that produce MaxText's scanned
layout are unrolled first, as its ``generate_param_only_checkpoint force_unroll=true`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import InputError

SCANNED = "layers"


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
    """MaxText's own saver: an Orbax checkpoint at ``directory/0/items`` (OCDBT, zarr3)."""
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    save_weights_to_checkpoint(str(Path(directory).resolve()), weights, 1, True, True)


def load(directory: Path) -> dict[str, Any]:
    """The parameter tree a MaxText checkpoint holds (``params.params`` of its train state)."""
    import orbax.checkpoint as ocp

    items = Path(directory).resolve() / "0" / "items"
    if not items.exists():
        raise InputError(f"{directory}: no MaxText checkpoint (0/items); re-run stage")
    return ocp.PyTreeCheckpointer().restore(str(items))["params"]["params"]


def value_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """Each parameter's ``outputs.value_digest`` (dtype, shape, sha256 of its values), read
    back from the checkpoint at ``directory``, by its path in the tree (``decoder/...``)."""
    from onnxforge.outputs import value_digest

    flat = flatten(load(directory))
    return {"/".join(path): value_digest(flat[path]) for path in sorted(flat)}
