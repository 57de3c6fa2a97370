"""Export: the staged JAX model -> ONNX (jax2onnx), weights as external data.

Batch and sequence stay symbolic, so one file serves any prompt length. We save the proto
ourselves: jax2onnx's own file mode keeps small models inline and has failed past 2 GB.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import onnx
from flax import nnx

from onnxforge import params_store
from onnxforge.families import get_family

ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def export(family_name: str, stage_dir: Path, out_dir: Path, *, dtype: str, opset: int) -> dict:
    from jax2onnx import to_onnx

    family = get_family(family_name)
    config = family.read_config(stage_dir)
    jdtype = jnp.dtype(dtype)
    model = params_store.load_into(
        nnx.eval_shape(lambda: family.build(config, jdtype)), stage_dir / "params", jdtype
    )

    def forward(token_ids: jax.Array) -> jax.Array:
        return model(token_ids)

    proto = to_onnx(
        forward,
        [jax.ShapeDtypeStruct(("batch", "sequence"), jnp.int32)],
        model_name=f"{family_name}",
        opset=opset,
        input_names=["input_ids"],
        output_names=["logits"],
    )
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    onnx.checker.check_model(proto)
    onnx.save_model(
        proto,
        str(out_dir / ONNX_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
        convert_attribute=True,
    )
    onnx.checker.check_model(str(out_dir / ONNX_FILE))
    return {
        "opset": opset,
        "dtype": dtype,
        "initializers": len(proto.graph.initializer),
        "nodes": len(proto.graph.node),
        "bytes": {f: (out_dir / f).stat().st_size for f in (ONNX_FILE, DATA_FILE)},
    }
