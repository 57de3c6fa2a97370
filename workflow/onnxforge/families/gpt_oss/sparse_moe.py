"""GPT-OSS's mixture of experts, sparse in ONNX: each token runs only its top-k experts.

JAX has no data-dependent shapes, so it cannot gather "the tokens routed to expert e". The
layer is therefore one JAX primitive, ``gpt_oss_sparse_moe``: in JAX it computes the dense
form (every expert, weighted by the router's combine weights, zero off the top k: exact), and
jax2onnx lowers it (the plugin below) to plain ONNX that ONNX Runtime's CPU and CUDA
providers run, per expert ``e``:

    rows = NonZero(chosen[:, e])                  tokens that picked e, [n_e]
    x_e = Gather(x, rows)                         [n_e, hidden]
    y_e = SwiGLU(x_e @ W_gate[e], x_e @ W_up[e]) @ W_down[e] (+ biases), times the weights
    out = ScatterND(out, rows, y_e, reduction=add)

so the FLOPs are those of tokens x k experts, not tokens x experts, with no Loop or If: one
static block per expert, and an empty ``rows`` costs a few empty ops.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

PRIMITIVE = Primitive("gpt_oss_sparse_moe")


def swiglu(gate: jax.Array, up: jax.Array, alpha: float, limit: float) -> jax.Array:
    """GPT-OSS's clamped SwiGLU."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return gate * jax.nn.sigmoid(gate * alpha) * (up + 1)


def _dense(x, weights, chosen, gate_k, gate_b, up_k, up_b, down_k, down_b, *, alpha, limit):
    """The JAX meaning: x ``[tokens, hidden]``, combine weights ``[tokens, experts]`` (zero
    off the top k), every expert computed and weighted (as the model's dense layer)."""
    del chosen  # the weights are zero wherever it is False
    gate = jnp.einsum("th,ehi->tei", x, gate_k) + gate_b
    up = jnp.einsum("th,ehi->tei", x, up_k) + up_b
    hidden = swiglu(gate, up, alpha, limit) * weights[..., None]
    return jnp.einsum("tei,eih->th", hidden, down_k) + weights @ down_b


PRIMITIVE.def_impl(_dense)
PRIMITIVE.def_abstract_eval(lambda x, *_, **__: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(PRIMITIVE, mlir.lower_fun(_dense, multiple_results=False))


def sparse_moe(x, weights, chosen, gate_k, gate_b, up_k, up_b, down_k, down_b, alpha, limit):
    """``[tokens, hidden]`` -> ``[tokens, hidden]``; ``chosen [tokens, experts]`` (bool): the
    router's top k, which the ONNX lowering routes by."""
    _register_onnx_lowering()
    return PRIMITIVE.bind(
        x,
        weights.astype(x.dtype),
        chosen,
        gate_k,
        gate_b,
        up_k,
        up_b,
        down_k,
        down_b,
        alpha=float(alpha),
        limit=float(limit),
    )


_REGISTERED: list[Any] = []


def _register_onnx_lowering() -> None:
    """Register the jax2onnx plugin once, on first use (jax2onnx loads only when exporting)."""
    if _REGISTERED:
        return
    import onnx_ir as ir
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    class SparseMoePlugin(PrimitiveLeafPlugin):
        _PRIM: ClassVar = PRIMITIVE

        @staticmethod
        def abstract_eval(x, *_, **__):
            return jax.core.ShapedArray(x.shape, x.dtype)

        def lower(self, ctx, eqn) -> None:
            _lower(ctx, eqn, ir, _ensure_value_metadata)

    register_primitive(jaxpr_primitive=PRIMITIVE.name, since="onnxforge", component="moe")(
        SparseMoePlugin
    )
    _REGISTERED.append(SparseMoePlugin)


def _lower(ctx, eqn, ir, ensure_metadata) -> None:
    x_var, weights_var, chosen_var, *kernel_vars = eqn.invars
    (out_var,) = eqn.outvars
    alpha, limit = eqn.params["alpha"], eqn.params["limit"]
    b = ctx.builder
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("moe_x"))
    weights = ctx.get_value_for_var(weights_var, name_hint=ctx.fresh_name("moe_w"))
    chosen = ctx.get_value_for_var(chosen_var, name_hint=ctx.fresh_name("moe_chosen"))
    gate_k, gate_b, up_k, up_b, down_k, down_b = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("moe_param")) for v in kernel_vars
    )
    dtype = x.type.dtype
    num_experts = int(kernel_vars[0].aval.shape[0])

    def typed(value, element=None):
        value.type = ir.TensorType(element or dtype)
        ensure_metadata(ctx, value)
        return value

    def const(array, hint):
        array = np.asarray(array)
        return ctx.builder.add_initializer_from_array(ctx.fresh_name(hint), array)

    def op(name, *inputs, element=None, **attrs):
        return typed(getattr(b, name)(*inputs, **attrs, _outputs=[ctx.fresh_name(name)]), element)

    alpha_c = const(np.asarray(alpha, dtype=ir.DataType(dtype).numpy()), "moe_alpha")
    limit_c = const(np.asarray(limit, dtype=ir.DataType(dtype).numpy()), "moe_limit")
    neg_limit_c = const(np.asarray(-limit, dtype=ir.DataType(dtype).numpy()), "moe_neg_limit")
    one_c = const(np.asarray(1.0, dtype=ir.DataType(dtype).numpy()), "moe_one")
    flat = const(np.asarray([-1], np.int64), "moe_flat")
    column = const(np.asarray([-1, 1], np.int64), "moe_column")
    out = op("Mul", x, const(np.asarray(0.0, dtype=ir.DataType(dtype).numpy()), "moe_zero"))
    for e in range(num_experts):
        index = const(np.asarray(e, np.int64), f"moe_expert{e}")
        picked = op("Gather", chosen, index, axis=1, element=ir.DataType.BOOL)  # [tokens]
        rows = op("Reshape", op("NonZero", picked, element=ir.DataType.INT64), flat,
                  element=ir.DataType.INT64)  # fmt: skip
        x_e = op("Gather", x, rows, axis=0)
        gate = op("Add", op("MatMul", x_e, op("Gather", gate_k, index, axis=0)),
                  op("Gather", gate_b, index, axis=0))  # fmt: skip
        up = op("Add", op("MatMul", x_e, op("Gather", up_k, index, axis=0)),
                op("Gather", up_b, index, axis=0))  # fmt: skip
        gate = op("Min", gate, limit_c)
        up = op("Min", op("Max", up, neg_limit_c), limit_c)
        glu = op("Mul", gate, op("Sigmoid", op("Mul", gate, alpha_c)))
        hidden = op("Mul", glu, op("Add", up, one_c))
        y = op("Add", op("MatMul", hidden, op("Gather", down_k, index, axis=0)),
               op("Gather", down_b, index, axis=0))  # fmt: skip
        weight = op("Reshape", op("Gather", op("Gather", weights, index, axis=1), rows, axis=0),
                    column)  # fmt: skip
        y = op("Mul", y, weight)
        out = op("ScatterND", out, op("Reshape", rows, column, element=ir.DataType.INT64), y,
                 reduction="add")  # fmt: skip
    result = op("Identity", out)
    ctx.bind_value_for_var(out_var, result)
