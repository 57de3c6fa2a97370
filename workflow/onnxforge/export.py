"""Export: the staged JAX model -> ONNX (jax2onnx), weights as external data.

Batch and sequence stay symbolic, so one file serves any prompt length. The model stays an
onnx_ir model and is saved with every weight in external data: a ModelProto cannot be
serialized (or checked in memory) past 2 GB, and building one would hold a second copy of the
weights next to JAX's.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import onnx
import onnx_ir as ir

from onnxforge.families import get_family

ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def export(family_name: str, stage_dir: Path, out_dir: Path, *, dtype: str, opset: int) -> dict:
    from jax2onnx import to_onnx

    model = get_family(family_name).load(stage_dir, jnp.dtype(dtype))

    model_ir = to_onnx(
        model,  # token ids -> logits
        [jax.ShapeDtypeStruct(("batch", "sequence"), jnp.int32)],
        model_name=f"{family_name}",
        opset=opset,
        input_names=["input_ids"],
        output_names=["logits"],
        return_mode="ir",
    )
    del model  # JAX's copy of the weights; the IR model holds its own from here
    if model_ir.functions:
        raise RuntimeError(
            f"jax2onnx produced {len(model_ir.functions)} local functions; "
            "inline them before saving (onnx_ir.passes.common.InlinePass)"
        )
    ir.save(model_ir, out_dir / ONNX_FILE, external_data=DATA_FILE, size_threshold_bytes=1024)
    counts = {"initializers": len(model_ir.graph.initializers), "nodes": len(model_ir.graph)}
    del model_ir
    onnx.checker.check_model(str(out_dir / ONNX_FILE))  # by path: works past 2 GB
    return {
        "opset": opset,
        "dtype": dtype,
        **counts,
        "bytes": {f: (out_dir / f).stat().st_size for f in (ONNX_FILE, DATA_FILE)},
    }
