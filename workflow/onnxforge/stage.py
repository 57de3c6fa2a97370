"""Stage: a downloaded checkpoint -> the JAX parameter tree (Orbax), tensor by tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from onnxforge import params_store
from onnxforge.errors import InputError
from onnxforge.families import get_family
from onnxforge.safetensors_stream import CheckpointReader


def staged_params(family_name: str, checkpoint_dir: Path) -> dict[tuple[str, ...], np.ndarray]:
    """Every model parameter filled from the checkpoint, shape-checked against the model."""
    family = get_family(family_name)
    config = family.read_config(checkpoint_dir)
    expected = params_store.state_shapes(nnx.eval_shape(lambda: family.build(config, np.float32)))
    reader = CheckpointReader(checkpoint_dir)
    params: dict[tuple[str, ...], np.ndarray] = {}
    for tensor_name, targets in family.stage_tensors(checkpoint_dir, config):
        tensor = reader.read(tensor_name)
        for path, transform in targets.items():
            value = transform(tensor)
            want_shape = expected[path][0]
            if value.shape != want_shape:
                raise InputError(
                    f"{reader.info(tensor_name).file}: tensor {tensor_name!r} has shape "
                    f"{tensor.shape}, giving {value.shape} for {'/'.join(path)}; the model built "
                    f"from config.json expects {want_shape}. Does config.json match the weights?"
                )
            params[path] = value
    unfilled = sorted("/".join(p) for p in expected.keys() - params.keys())
    if unfilled:
        raise InputError(f"{checkpoint_dir}: no checkpoint tensor fills {unfilled[:5]}")
    return params


def stage(family_name: str, checkpoint_dir: Path, out_dir: Path) -> None:
    """Write ``params/`` (Orbax) and ``config.json`` into ``out_dir`` (a fresh directory)."""
    params = staged_params(family_name, checkpoint_dir)
    params_store.save(params, out_dir / "params")
    shutil.copy2(Path(checkpoint_dir) / "config.json", out_dir / "config.json")
