"""Export: the staged JAX model -> ONNX (jax2onnx), weights as external data.

Two forms (a variant's ``decoder``): ``full``, token ids -> logits over the whole sequence;
``kv``, the KV-cache decoder, in a folder ONNX Runtime GenAI runs (``genai.py``). The graphs'
inputs and outputs are ``signature``'s. The model stays an onnx_ir model and is
saved with every weight in external data: a ModelProto cannot be serialized (or checked in
memory) past 2 GB, and building one would hold a second copy of the weights next to JAX's.
"""

from __future__ import annotations

from pathlib import Path

from onnxforge import graph_passes, lowering, progress, signature
from onnxforge.families.base import Family
from onnxforge.layout import DATA_FILE, ONNX_FILE


def trace(forward, name: str, opset: int, input_shape=signature.INPUT_AXES, output_names=None):
    """``forward`` (token ids -> logits) as an onnx_ir model with the signature's names;
    ``input_shape``: symbolic axes by default, or a fixed shape. ``output_names``: for a
    ``forward`` with more outputs than the logits (the diagnosis's debug export)."""
    import jax
    from jax2onnx import to_onnx

    from onnxforge import jax2onnx_extensions, jax2onnx_overrides

    jax2onnx_overrides.install()
    jax2onnx_extensions.install()
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

    from onnxforge import jax2onnx_extensions, jax2onnx_overrides
    from onnxforge.signature import BATCH, PAST, SEQUENCE, TOTAL

    jax2onnx_overrides.install()
    jax2onnx_extensions.install()

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


def export(
    family: Family,
    stage_dir: Path,
    out_dir: Path,
    *,
    dtype: str,
    opset: int,
    decoder: str = "full",
    ops: str = "plain",
    checkpoint_dir: Path | None = None,
) -> dict:
    """``decoder``: ``full`` or ``kv``; a ``kv`` export also writes ``genai_config.json`` and
    the checkpoint's tokenizer files (from ``checkpoint_dir``) beside the model. ``ops``: which
    operators a kv decoder's primitives are lowered to (``lowering.KINDS``)."""
    import jax.numpy as jnp
    import onnx

    if decoder == "kv":
        from onnxforge import genai

        if checkpoint_dir is None:
            raise ValueError("a kv export needs the checkpoint folder (its tokenizer)")
        with progress.phase("load"):
            model = family.load_decoder(stage_dir, jnp.dtype(dtype))
        with progress.phase("trace and convert (jax2onnx)"), lowering.ops(ops, opset):
            model_ir = trace_decoder(model, family.name, opset)
        # GenAI may keep each cache in one buffer only where GroupQueryAttention appends to it.
        attending = sum(node.op_type == "GroupQueryAttention" for node in model_ir.graph)
        genai_files = genai.write_folder(
            model, stage_dir, checkpoint_dir, out_dir, share_buffer=attending == model.num_layers
        )
    else:
        with progress.phase("load"):
            model = family.load(stage_dir, jnp.dtype(dtype))
        with progress.phase("trace and convert (jax2onnx)"):
            model_ir = trace(model.bound(), family.name, opset)
        genai_files = []
    del model  # JAX's copy of the weights; the IR model holds its own from here
    if any(node.domain == lowering.CONTRIB_DOMAIN for node in model_ir.graph):  # ops: ort
        model_ir.opset_imports.setdefault(lowering.CONTRIB_DOMAIN, 1)
    rewritten = graph_passes.einsum_to_matmul(model_ir)  # MatMul: what ONNX Runtime runs fast
    fused = graph_passes.fuse_sibling_matmuls(model_ir)  # q/k/v, gate/up: one MatMul each
    folded = graph_passes.fold_constant_layouts(model_ir)  # e.g. the MoE op's experts
    collapsed = graph_passes.collapse_reshapes(model_ir)  # no-op Reshapes; then what is unused
    weights = sum(v.const_value.nbytes for v in model_ir.graph.initializers.values())
    with progress.phase(f"save ({progress.size(weights)} of weights)", watch=out_dir):
        save(model_ir, out_dir)
    counts = {
        "initializers": len(model_ir.graph.initializers),
        "nodes": len(model_ir.graph),
        "einsums_as_matmul": rewritten,
        "matmuls_fused": fused,
        "layouts_folded": folded,
        "reshapes_collapsed": collapsed,
        "contrib_ops": sorted(
            {n.op_type for n in model_ir.graph if n.domain == lowering.CONTRIB_DOMAIN}
        ),
    }
    del model_ir
    with progress.phase("check (onnx.checker)"):
        onnx.checker.check_model(str(out_dir / ONNX_FILE))  # by path: works past 2 GB
    return {
        "opset": opset,
        "dtype": dtype,
        "decoder": decoder,
        "ops": ops,
        **counts,
        "genai_files": genai_files,
        "bytes": {f: (out_dir / f).stat().st_size for f in (ONNX_FILE, DATA_FILE)},
    }
