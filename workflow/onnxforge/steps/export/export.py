"""Export: the staged JAX model -> ONNX (jax2onnx), weights as external data.

Two forms (a variant's ``decoder``): ``full``, token ids -> logits over the whole sequence;
``kv``, the KV-cache decoder, in a folder ONNX Runtime GenAI runs (``genai.py``). The graphs'
inputs and outputs are ``signature``'s. The model stays an onnx_ir model and is
saved with every weight in external data: a ModelProto cannot be serialized (or checked in
memory) past 2 GB, and building one would hold a second copy of the weights next to JAX's.
"""

from __future__ import annotations

from pathlib import Path

from onnxforge.core import progress
from onnxforge.core.paths import DATA_FILE, ONNX_FILE
from onnxforge.families.base import Family
from onnxforge.graph import lowering, passes
from onnxforge.graph.tracing import save, trace, trace_decoder
from onnxforge.steps.export import smoke_run


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
        from onnxforge.steps.export import genai

        if checkpoint_dir is None:
            raise ValueError("a kv export needs the checkpoint folder (its tokenizer)")
        with progress.phase("load"):
            model = family.load_decoder(stage_dir, jnp.dtype(dtype))
        with progress.phase("trace and convert (jax2onnx)"), lowering.ops(ops, opset):
            model_ir = trace_decoder(model, family.name, opset)
        # GenAI may keep each cache in one buffer only where GroupQueryAttention appends to it.
        attending = sum(node.op_type == "GroupQueryAttention" for node in model_ir.graph)
        genai_files = genai.write_folder(
            family,
            model,
            stage_dir,
            checkpoint_dir,
            out_dir,
            share_buffer=attending == model.num_layers,
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
    rewritten = passes.einsum_to_matmul(model_ir)  # MatMul: what ONNX Runtime runs fast
    fused = passes.fuse_sibling_matmuls(model_ir)  # q/k/v, gate/up: one MatMul each
    folded = passes.fold_constant_layouts(model_ir)  # e.g. the MoE op's experts
    collapsed = passes.collapse_reshapes(model_ir)  # no-op Reshapes; then what is unused
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
    with progress.phase("run once (ONNX Runtime)"):
        ran = smoke_run.run_once(out_dir / ONNX_FILE, decoder, dtype)
    return {
        "opset": opset,
        "dtype": dtype,
        "decoder": decoder,
        "ops": ops,
        **counts,
        "genai_files": genai_files,
        "ran": ran,  # the logits' shapes of the run that checked ONNX Runtime runs it
        "bytes": {f: (out_dir / f).stat().st_size for f in (ONNX_FILE, DATA_FILE)},
    }
