"""MaxText's routed MoE (Mixtral), sparse in ONNX: each token runs only its top-k experts.

MaxText's own sparse path (``sparse_matmul``: permute, ``ragged_dot``/megablox, unpermute,
inside ``shard_map`` with a dropless ``lax.cond``) does not export: jax2onnx lowers
``ragged_dot`` for one group only. Its dense path (``dense_matmul``) runs every expert on every
token. So ``RoutedMoE.dense_matmul`` is replaced, for KV exports, by MaxText's own routing
(``get_topk``, ``reshape_and_update_weights``) followed by one JAX primitive,
``maxtext_sparse_moe``: in JAX it is exactly MaxText's dense computation (every expert,
weighted by the combine weights, zero off the top k); jax2onnx lowers it to plain ONNX, per
expert ``e`` (as ``families/gpt_oss/sparse_moe.py`` does for GPT-OSS):

    rows = NonZero(chosen[:, e]); x_e = Gather(x, rows)
    y_e = (silu(x_e @ wi_0[e]) * (x_e @ wi_1[e])) @ wo[e] * weight[rows, e]
    out = ScatterND(out, rows, y_e, reduction=add)

FLOPs ∝ tokens × k. Only MaxText's SwiGLU experts (``mlp_activations: [silu, linear]``, no
bias, no capacity) take this path; any other MoE keeps MaxText's dense one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

PRIMITIVE = Primitive("maxtext_sparse_moe")


def _dense(x, weights, chosen, wi_0, wi_1, wo):
    """MaxText's dense_matmul for SwiGLU experts: x [tokens, emb], weights [tokens, experts]."""
    del chosen  # the weights are zero wherever it is False
    highest = jax.lax.Precision.HIGHEST
    gate = jnp.einsum("tm,emh->teh", x, wi_0, precision=highest)
    up = jnp.einsum("tm,emh->teh", x, wi_1, precision=highest)
    out = jnp.einsum("teh,ehm->tem", jax.nn.silu(gate) * up, wo, precision=highest)
    return jnp.einsum("tem,te->tm", out, weights, precision=highest)


PRIMITIVE.def_impl(_dense)
PRIMITIVE.def_abstract_eval(lambda x, *_: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(PRIMITIVE, mlir.lower_fun(_dense, multiple_results=False))


def sparse_moe(x, weights, chosen, wi_0, wi_1, wo):
    """``[tokens, emb]`` -> ``[tokens, emb]``; ``chosen [tokens, experts]`` (bool): the
    router's top k, which the ONNX lowering routes by."""
    _register_onnx_lowering()
    return PRIMITIVE.bind(x, weights.astype(x.dtype), chosen, wi_0, wi_1, wo)


def supports(moe) -> bool:
    """Whether MaxText's ``RoutedMoE`` is one this path computes exactly."""
    cfg = moe.config
    return (
        tuple(cfg.mlp_activations) == ("silu", "linear")
        and not cfg.mlp_bias
        and cfg.capacity_factor <= 0
        and str(cfg.decoder_block.value) == "mixtral"
        and moe.wi_0_sparsity_module is None
        and getattr(moe, "per_expert_scale", None) is None
    )


_ORIGINAL: dict[str, Any] = {}


def _sparse_dense_matmul(
    self, inputs, gate_logits, pre_bias_logits, w0_kernel, w1_kernel, wo_kernel, *args, **kw
):
    """``RoutedMoE.dense_matmul`` with MaxText's routing and the sparse primitive."""
    if not supports(self) or kw.get("forced_routed_experts") is not None:
        return _ORIGINAL["dense"](
            self, inputs, gate_logits, pre_bias_logits, w0_kernel, w1_kernel, wo_kernel, *args, **kw
        )
    top_k_weights, top_k_indices = self.get_topk(gate_logits, pre_bias_logits, self.rngs)
    weights = self.reshape_and_update_weights(top_k_weights, top_k_indices)  # [b, s, experts]
    # A float one-hot: ONNX Runtime's CPU OneHot has no int32-output kernel.
    chosen = jax.nn.one_hot(top_k_indices, self.num_experts, dtype=self.dtype).sum(-2) > 0
    batch, length, emb = inputs.shape
    flat = (batch * length, emb)
    out = sparse_moe(
        inputs.reshape(flat),
        weights.reshape(flat[0], -1),
        chosen.reshape(flat[0], -1),
        w0_kernel.astype(self.dtype),
        w1_kernel.astype(self.dtype),
        wo_kernel.astype(self.dtype),
    )
    return out.reshape(batch, length, emb).astype(self.dtype), None, None


def patch_sparse() -> None:
    """Route MaxText's dense MoE through the sparse primitive (idempotent)."""
    from maxtext.layers import moe

    if not _ORIGINAL:
        _ORIGINAL["dense"] = moe.RoutedMoE.dense_matmul
        moe.RoutedMoE.dense_matmul = _sparse_dense_matmul


_REGISTERED: list[Any] = []


def _register_onnx_lowering() -> None:
    if _REGISTERED:
        return
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    class SparseMoePlugin(PrimitiveLeafPlugin):
        _PRIM: ClassVar = PRIMITIVE

        @staticmethod
        def abstract_eval(x, *_):
            return jax.core.ShapedArray(x.shape, x.dtype)

        def lower(self, ctx, eqn) -> None:
            _lower(ctx, eqn)

    register_primitive(jaxpr_primitive=PRIMITIVE.name, since="onnxforge", component="moe")(
        SparseMoePlugin
    )
    _REGISTERED.append(SparseMoePlugin)


def _lower(ctx, eqn) -> None:
    import onnx_ir as ir
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata

    x_var, weights_var, chosen_var, *kernel_vars = eqn.invars
    (out_var,) = eqn.outvars
    x, weights, chosen, wi_0, wi_1, wo = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("moe_in"))
        for v in (x_var, weights_var, chosen_var, *kernel_vars)
    )
    dtype = x.type.dtype
    num_experts = int(kernel_vars[0].aval.shape[0])

    def op(name, *inputs, element=None, **attrs):
        value = getattr(ctx.builder, name)(*inputs, **attrs, _outputs=[ctx.fresh_name(name)])
        value.type = ir.TensorType(element or dtype)
        _ensure_value_metadata(ctx, value)
        return value

    def const(array, hint):
        return ctx.builder.add_initializer_from_array(ctx.fresh_name(hint), np.asarray(array))

    flat = const(np.asarray([-1], np.int64), "moe_flat")
    column = const(np.asarray([-1, 1], np.int64), "moe_column")
    out = op("Mul", x, const(np.asarray(0.0, ir.DataType(dtype).numpy()), "moe_zero"))
    for e in range(num_experts):
        index = const(np.asarray(e, np.int64), f"moe_expert{e}")
        picked = op("Gather", chosen, index, axis=1, element=ir.DataType.BOOL)
        rows = op("NonZero", picked, element=ir.DataType.INT64)
        rows = op("Reshape", rows, flat, element=ir.DataType.INT64)
        x_e = op("Gather", x, rows, axis=0)
        gate = op("MatMul", x_e, op("Gather", wi_0, index, axis=0))
        up = op("MatMul", x_e, op("Gather", wi_1, index, axis=0))
        hidden = op("Mul", op("Mul", gate, op("Sigmoid", gate)), up)  # silu(gate) * up
        y = op("MatMul", hidden, op("Gather", wo, index, axis=0))
        weight = op("Gather", op("Gather", weights, index, axis=1), rows, axis=0)
        y = op("Mul", y, op("Reshape", weight, column))
        indices = op("Reshape", rows, column, element=ir.DataType.INT64)
        out = op("ScatterND", out, indices, y, reduction="add")
    ctx.bind_value_for_var(out_var, op("Identity", out))
