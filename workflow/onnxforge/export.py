"""Export: the staged JAX model -> ONNX (jax2onnx), weights as external data.

The graph's inputs and outputs are ``signature``'s. The model stays an onnx_ir model and is
saved with every weight in external data: a ModelProto cannot be serialized (or checked in
memory) past 2 GB, and building one would hold a second copy of the weights next to JAX's.
"""

from __future__ import annotations

from pathlib import Path

from onnxforge import signature
from onnxforge.families.base import Family
from onnxforge.layout import DATA_FILE, ONNX_FILE


def trace(forward, name: str, opset: int, input_shape=signature.INPUT_AXES):
    """``forward`` (token ids -> logits) as an onnx_ir model with the signature's names;
    ``input_shape``: symbolic axes by default, or a fixed shape."""
    import jax
    from jax2onnx import to_onnx

    from onnxforge import jax2onnx_overrides

    jax2onnx_overrides.install()
    return to_onnx(
        forward,
        [jax.ShapeDtypeStruct(tuple(input_shape), signature.INPUT_DTYPE)],
        model_name=name,
        opset=opset,
        input_names=list(signature.INPUT_NAMES),
        output_names=list(signature.OUTPUT_NAMES),
        return_mode="ir",
    )


def save(model_ir, out_dir: Path) -> None:
    """``model.onnx`` with every weight in ``model.onnx.data``."""
    import onnx_ir as ir

    if model_ir.functions:
        raise RuntimeError(
            f"jax2onnx produced {len(model_ir.functions)} local functions; "
            "inline them before saving (onnx_ir.passes.common.InlinePass)"
        )
    ir.save(model_ir, out_dir / ONNX_FILE, external_data=DATA_FILE, size_threshold_bytes=1024)


def export(family: Family, stage_dir: Path, out_dir: Path, *, dtype: str, opset: int) -> dict:
    import jax.numpy as jnp
    import onnx

    model = family.load(stage_dir, jnp.dtype(dtype))
    model_ir = trace(model.bound(), family.name, opset)
    del model  # JAX's copy of the weights; the IR model holds its own from here
    save(model_ir, out_dir)
    counts = {"initializers": len(model_ir.graph.initializers), "nodes": len(model_ir.graph)}
    del model_ir
    onnx.checker.check_model(str(out_dir / ONNX_FILE))  # by path: works past 2 GB
    return {
        "opset": opset,
        "dtype": dtype,
        **counts,
        "bytes": {f: (out_dir / f).stat().st_size for f in (ONNX_FILE, DATA_FILE)},
    }
