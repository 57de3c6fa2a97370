"""The ONNX side of a sparse MoE primitive: each expert runs on the tokens routed to it.

Two lowerings, chosen per export (a variant's ``ops``, ``onnxforge.graph.lowering``):

- ``plain``: per expert, Gather its column of the ``chosen`` mask, NonZero -> the rows, Gather
  those tokens, the expert's own math (the family's ``expert`` function), scale by the routing
  weights, ScatterND-add back. Plain ONNX (no Loop, If or contrib op) that ONNX Runtime's CPU
  and CUDA providers run, and any other runtime; FLOPs grow with the routed tokens, not the
  number of experts. Each expert is a block of nodes, run (empty) even when no token picked it:
  in a decode step of 32 experts x 4 layers, hundreds of near-empty kernels.
- ``ort``: ONNX Runtime's fused ``com.microsoft.MoE`` (what GenAI's builder writes), one node
  per layer, routed by the router's ``logits`` themselves: the op's softmax, top k and
  renormalization (``normalize_routing_weights=1``) are the softmax over the top-k logits,
  which is how both families' routers weigh their experts (a family with any other routing
  gives no ``fused`` description). The expert kernels are laid out as the op wants by ONNX ops
  on the weights, folded into initializers at export (``passes.fold_constant_layouts``).
  Only SwiGLU experts (the family's ``fused`` description) take it.

A primitive's inputs are ``x [..., d]``, ``weights [..., experts]`` (the softmax of the top-k
``logits``, zero elsewhere), ``chosen [..., experts]`` (bool), the router's ``logits [...,
experts]`` and then the expert kernels, each ``[experts, ...]``; its output is ``[..., d]``.
Both lowerings work on rows of tokens and give the output ``x``'s shape back from ``x`` itself
(a reshape in JAX would take the token axes from whichever tensor jax2onnx finds first, keeping
the routing alive in a graph that does not need it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from onnxforge.graph import lowering
from onnxforge.graph.builder import Builder

_REGISTERED: dict[str, Any] = {}


@dataclass
class FusedExperts:
    """SwiGLU experts as ``com.microsoft.MoE`` takes them: ``fc1 [experts, 2 * inner, d]`` with
    gate and up interleaved (``swiglu_fusion=1``), ``fc2 [experts, d, inner]``, optional biases;
    the activation is ``min(gate, limit) * sigmoid(alpha * gate) * (clip(up, limit) + beta)``."""

    fc1: Any
    fc2: Any
    fc1_bias: Any = None
    fc2_bias: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)  # activation_alpha, beta, limit


# expert(builder, x_e [rows, d], this expert's kernels, the primitive's params) -> y [rows, d]
Expert = Callable[[Builder, Any, list[Any], dict[str, Any]], Any]
# fused(builder, the kernels, the primitive's params) -> the op's expert weights
Fused = Callable[[Builder, list[Any], dict[str, Any]], FusedExperts]


def _pairs(b: Builder, gate, up):
    """``[..., inner]`` twice -> ``[..., inner, 2]``: each gate value beside its up value."""
    axis = b.const([-1], "moe_last_axis", np.int64)
    return b.op("Concat", b.op("Unsqueeze", gate, axis), b.op("Unsqueeze", up, axis), axis=-1)


def interleave(b: Builder, gate, up):
    """``[experts, d, inner]`` twice -> ``[experts, 2 * inner, d]``: gate and up alternating
    along the output axis, the contraction axis last (the MoE op's ``fc1``)."""
    flat = b.op("Reshape", _pairs(b, gate, up), b.const([0, 0, -1], "moe_pairs", np.int64))
    return b.op("Transpose", flat, perm=[0, 2, 1])


def interleave_bias(b: Builder, gate, up):
    """``[experts, inner]`` twice -> ``[experts, 2 * inner]``, alternating (``fc1``'s bias)."""
    return b.op("Reshape", _pairs(b, gate, up), b.const([0, -1], "moe_bias_pairs", np.int64))


def register(primitive, expert: Expert, fused: Fused | None = None) -> None:
    """Register ``primitive``'s jax2onnx lowering once (jax2onnx loads only when exporting);
    ``fused``: how its experts map onto ``com.microsoft.MoE`` (the ``ort`` lowering)."""
    if primitive.name in _REGISTERED:
        return
    import jax
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    class SparseMoePlugin(PrimitiveLeafPlugin):
        _PRIM: ClassVar = primitive

        @staticmethod
        def abstract_eval(x, *_, **__):
            return jax.core.ShapedArray(x.shape, x.dtype)

        def lower(self, ctx, eqn) -> None:
            if lowering.fused() and fused is not None:
                lower_moe_op(ctx, eqn, fused)
            else:
                lower_routed_experts(ctx, eqn, expert)

    register_primitive(jaxpr_primitive=primitive.name, since="onnxforge", component="moe")(
        SparseMoePlugin
    )
    _REGISTERED[primitive.name] = SparseMoePlugin


def _tokens(b: Builder, value, var):
    """``[..., n]`` -> ``[tokens, n]``: the lowerings work on rows of tokens."""
    shape = b.const([-1, int(var.aval.shape[-1])], "moe_rows", np.int64)
    return b.op("Reshape", value, shape, element=value.type.dtype)


def _restored(b: Builder, out, x):
    """``[tokens, d]`` back to ``x``'s shape ``[..., d]``, read off ``x`` at run time."""
    return b.op("Reshape", out, b.op("Shape", x, element=b.ir.DataType.INT64))


def lower_routed_experts(ctx, eqn, expert: Expert) -> None:
    x_var, weights_var, chosen_var, _, *kernel_vars = eqn.invars
    (out_var,) = eqn.outvars
    x_in, weights, chosen, *kernels = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("moe_in"))
        for v in (x_var, weights_var, chosen_var, *kernel_vars)
    )
    b = Builder(ctx, x_in.type.dtype)
    pairs = ((x_in, x_var), (weights, weights_var), (chosen, chosen_var))
    x, weights, chosen = (_tokens(b, value, var) for value, var in pairs)
    int64, boolean = b.ir.DataType.INT64, b.ir.DataType.BOOL
    flat = b.const([-1], "moe_flat", np.int64)
    column = b.const([-1, 1], "moe_column", np.int64)
    out = b.op("Mul", x, b.const(0.0, "moe_zero"))
    for e in range(int(kernel_vars[0].aval.shape[0])):
        index = b.const(e, f"moe_expert{e}", np.int64)
        picked = b.op("Gather", chosen, index, axis=1, element=boolean)  # [tokens]
        rows = b.op("Reshape", b.op("NonZero", picked, element=int64), flat, element=int64)
        x_e = b.op("Gather", x, rows, axis=0)
        y = expert(b, x_e, [b.op("Gather", k, index, axis=0) for k in kernels], eqn.params)
        weight = b.op("Gather", b.op("Gather", weights, index, axis=1), rows, axis=0)
        y = b.op("Mul", y, b.op("Reshape", weight, column))
        indices = b.op("Reshape", rows, column, element=int64)
        out = b.op("ScatterND", out, indices, y, reduction="add")
    ctx.bind_value_for_var(out_var, _restored(b, out, x_in))


def lower_moe_op(ctx, eqn, fused: Fused) -> None:
    """``com.microsoft.MoE`` routed by the primitive's logits (the module's docstring); the
    primitive's ``k`` param is its number of experts per token."""
    x_var, _, _, logits_var, *kernel_vars = eqn.invars
    (out_var,) = eqn.outvars
    x_in, logits, *kernels = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("moe_in"))
        for v in (x_var, logits_var, *kernel_vars)
    )
    b = Builder(ctx, x_in.type.dtype)
    x, logits = _tokens(b, x_in, x_var), _tokens(b, logits, logits_var)
    experts = fused(b, kernels, eqn.params)
    attributes = {"k": int(eqn.params["k"]), "activation_type": "swiglu", "swiglu_fusion": 1}
    attributes.update(normalize_routing_weights=1, **experts.attributes)
    inputs = [x, logits, experts.fc1, experts.fc1_bias, experts.fc2, experts.fc2_bias]
    mixed = b.op("MoE", *inputs, _domain=lowering.CONTRIB_DOMAIN, **attributes)
    ctx.bind_value_for_var(out_var, _restored(b, mixed, x_in))
