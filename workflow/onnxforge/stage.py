"""Stage: a downloaded checkpoint -> the JAX parameter tree (Orbax), tensor by tensor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flax import nnx

from onnxforge import params_store
from onnxforge.errors import InputError
from onnxforge.families import get_family
from onnxforge.families.base import read_config_json
from onnxforge.safetensors_stream import CheckpointReader


def write_config(
    family_name: str, checkpoint_dir: Path, out_dir: Path, layers: int | None = None
) -> None:
    """The checkpoint's config.json, cut to its first ``layers`` layers when asked.

    A layer-truncated stage lets a real-width model be checked on a small machine; the
    reference then loads the same layers from this config.
    """
    source = Path(checkpoint_dir) / "config.json"
    config = get_family(family_name).normalize_config(read_config_json(checkpoint_dir))
    if layers is not None:
        available = config.get("num_hidden_layers")
        if not isinstance(available, int) or not 0 < layers <= available:
            raise InputError(
                f"{source}: cannot keep {layers} layers; num_hidden_layers is {available}"
            )
        config["num_hidden_layers"] = layers
        if isinstance(config.get("layer_types"), list):
            config["layer_types"] = config["layer_types"][:layers]
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def staged_params(
    family_name: str, checkpoint_dir: Path, config_dir: Path
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Every model parameter, one at a time, filled from the checkpoint and shape-checked."""
    family = get_family(family_name)
    config = family.read_config(config_dir)
    expected = params_store.state_shapes(nnx.eval_shape(lambda: family.build(config, np.float32)))
    reader = CheckpointReader(checkpoint_dir)
    filled: set[tuple[str, ...]] = set()
    for sources, targets in family.stage_tensors(reader, config):
        tensors = [reader.tensor(name) for name in sources]
        shapes = ", ".join(f"{n!r} {t.shape}" for n, t in zip(sources, tensors, strict=True))
        for index, (path, transform) in enumerate(targets.items()):
            try:
                value = transform(*tensors)
            except ValueError as err:  # e.g. MXFP4 blocks and scales that do not pair up
                raise InputError(f"{reader.directory}: tensors {list(sources)}: {err}") from err
            if index == len(targets) - 1:
                tensors = []  # free the source before the value is written
            want_shape = expected[path][0]
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
        raise InputError(f"{checkpoint_dir}: no checkpoint tensor fills {unfilled[:5]}")


def stage(
    family_name: str, checkpoint_dir: Path, out_dir: Path, layers: int | None = None
) -> dict[str, str]:
    """Write ``config.json`` and ``params/`` (Orbax) into ``out_dir`` (a fresh directory).

    Returns the sha256 of every file under ``params/``, by path relative to ``out_dir``,
    hashed as written (for the manifest: the files need not be read again).
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_config(family_name, checkpoint_dir, out_dir, layers)
    with params_store.StreamingWriter(Path(out_dir) / "params") as writer:
        for path, value in staged_params(family_name, checkpoint_dir, out_dir):
            writer.write(path, value)
            del value  # not held while the next parameter is made
    return {f"params/{name}": digest for name, digest in writer.hashes.items()}
