"""Tracing and saving: a JAX function -> an onnx_ir model with the signature's names (jax2onnx,
with this project's plugins and fixes installed), saved with every weight as external data."""

from __future__ import annotations

from pathlib import Path

from onnxforge.core.paths import DATA_FILE, ONNX_FILE
from onnxforge.graph import signature


def trace(forward, name: str, opset: int, input_shape=signature.INPUT_AXES, output_names=None):
    """``forward`` (token ids -> logits) as an onnx_ir model with the signature's names;
    ``input_shape``: symbolic axes by default, or a fixed shape. ``output_names``: for a
    ``forward`` with more outputs than the logits (the diagnosis's debug export)."""
    import jax
    from jax2onnx import to_onnx

    from onnxforge.graph import jax2onnx_fixes, jax2onnx_plugins

    jax2onnx_fixes.install()
    jax2onnx_plugins.install()
    return to_onnx(
        forward,
        [jax.ShapeDtypeStruct(tuple(input_shape), signature.INPUT_DTYPE)],
        model_name=name,
        opset=opset,
        input_names=list(signature.INPUT_NAMES),
        output_names=list(output_names or signature.OUTPUT_NAMES),
        return_mode="ir",
    )


def save(model_ir, out_dir: Path, onnx_file: str = ONNX_FILE, data_file: str = DATA_FILE) -> None:
    """``model.onnx`` with every weight in ``model.onnx.data``."""
    import onnx_ir as ir

    if model_ir.functions:
        raise RuntimeError(
            f"jax2onnx produced {len(model_ir.functions)} local functions; "
            "inline them before saving (onnx_ir.passes.common.InlinePass)"
        )
    ir.save(model_ir, out_dir / onnx_file, external_data=data_file, size_threshold_bytes=1024)


def trace_decoder(decoder, name: str, opset: int):
    """The KV-cache decoder as an onnx_ir model with the signature's names and symbolic axes.

    jax2onnx traces with 64-bit integers off (JAX's default), so the int64 inputs are traced
    as int32 and then declared int64 in front of a Cast (``_int64_inputs``)."""
    import jax
    import jax.numpy as jnp
    from jax2onnx import to_onnx

    from onnxforge.graph import jax2onnx_fixes, jax2onnx_plugins
    from onnxforge.graph.signature import BATCH, PAST, SEQUENCE, TOTAL

    jax2onnx_fixes.install()
    jax2onnx_plugins.install()

    leaf = jax.tree_util.tree_leaves(decoder.params)[0]
    cache = jax.ShapeDtypeStruct((BATCH, decoder.kv_heads, PAST, decoder.head_dim), leaf.dtype)
    specs = [
        jax.ShapeDtypeStruct((BATCH, SEQUENCE), jnp.int32),
        jax.ShapeDtypeStruct((BATCH, TOTAL), jnp.int32),
        jax.ShapeDtypeStruct((BATCH, SEQUENCE), jnp.int32),
        *[cache] * (2 * decoder.num_layers),
    ]
    step = decoder.bound()

    def forward(input_ids, attention_mask, position_ids, *cache_arrays):
        past = list(zip(cache_arrays[0::2], cache_arrays[1::2], strict=True))
        logits, present = step(input_ids, attention_mask, position_ids, past)
        return (logits, *[array for pair in present for array in pair])

    model_ir = to_onnx(
        forward,
        specs,
        model_name=name,
        opset=opset,
        input_names=signature.kv_input_names(decoder.num_layers),
        output_names=signature.kv_output_names(decoder.num_layers),
        return_mode="ir",
    )
    _int64_inputs(model_ir, (signature.INPUT_IDS, signature.ATTENTION_MASK, signature.POSITION_IDS))
    return model_ir


def _int64_inputs(model_ir, names) -> None:
    """Declare the named int32 graph inputs int64 (the contract's type), each cast to int32
    once for the graph traced with int32."""
    import onnx_ir as ir

    graph = model_ir.graph
    for graph_input in graph.inputs:
        if graph_input.name not in names or graph_input.dtype == ir.DataType.INT64:
            continue
        cast = ir.node(
            "Cast", [graph_input], {"to": ir.DataType.INT32}, name=f"{graph_input.name}_int32"
        )
        narrow = cast.outputs[0]
        narrow.name = f"{graph_input.name}_int32"
        # Fresh type objects: jax2onnx shares one between values, and onnx_ir's dtype setter
        # would change them all.
        narrow.type, narrow.shape = ir.TensorType(ir.DataType.INT32), graph_input.shape
        for user, index in list(graph_input.uses()):
            if user is not cast:
                user.replace_input_with(index, narrow)
        graph_input.type = ir.TensorType(ir.DataType.INT64)
        graph.insert_before(graph[0], cast)
