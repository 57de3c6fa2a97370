"""A KV step's attention as ONNX Runtime's fused ``com.microsoft.GroupQueryAttention``, for
exports with ``ops: ort`` (``onnxforge.lowering``).

A family calls ``step_attention`` where its KV step attends: in a plain export (and in JAX) it
runs the family's own ``dense`` function, unchanged; in an ``ort`` export it binds the
primitive ``onnxforge_kv_attention``, which jax2onnx lowers to one GroupQueryAttention node:

- queries ``[batch, sequence, heads, head_dim]`` and this step's keys and values ``[batch,
  sequence, kv_heads, head_dim]`` (rotated already: the family's RoPE stays its own code),
  the past ``[batch, kv_heads, past, head_dim]``; out come the attention ``[batch, sequence,
  heads, head_dim]`` and the present (past, then this step), as the family's ``dense`` gives;
- causal over cache indices, as our decoders are: query ``past + i`` sees key ``j <= past +
  i`` (``seqlens_k`` = total - 1 for every row, so GroupQueryAttention takes the whole buffer);
- padding (``attention_mask`` 0) as ``attention_bias``: minus 0.7 x the largest float, finite
  (MaxText's mask value), so that a row of padding only stays finite: a NaN there would reach
  the real rows through 0 x NaN in the next layer's values;
- a sliding window (``local_window_size``: key ``j`` seen while ``past + i - j < window``),
  per-head sinks (``head_sink``) and the logits' scale.

The four generation gates check it end to end (``f32-kv``), as the plain graph (``f32-kv-plain``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from onnxforge import lowering

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_PRIMITIVE: dict[str, Any] = {}


def step_attention(
    dense: Callable,
    query,
    key,
    value,
    past_key,
    past_value,
    attention_mask,
    *,
    scale: float,
    window: int = 0,
    sinks=None,
):
    """``dense(query, key, value, past_key, past_value, attention_mask) -> (out, present_key,
    present_value)`` (the family's code), or the fused primitive in an ``ort`` export."""
    if not lowering.fused():
        return dense(query, key, value, past_key, past_value, attention_mask)
    primitive = _primitive()
    operands = [query, key, value, past_key, past_value, attention_mask]
    if sinks is not None:
        operands.append(sinks)
    params = {
        "dense": dense,
        "scale": float(scale),
        "window": int(window or 0),
        "sinks": sinks is not None,
    }
    return tuple(primitive.bind(*operands, **params))


def _primitive():
    if _PRIMITIVE:
        return _PRIMITIVE["primitive"]
    import jax
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    primitive = Primitive("onnxforge_kv_attention")
    primitive.multiple_results = True

    def impl(*operands, dense, **_):
        return dense(*operands[:6])

    def abstract(query, key, value, past_key, past_value, *_, **__):
        batch, kv_heads, past, head_dim = past_key.shape
        total = past + key.shape[1]
        present = jax.core.ShapedArray((batch, kv_heads, total, head_dim), past_key.dtype)
        return [jax.core.ShapedArray(query.shape, query.dtype), present, present]

    primitive.def_impl(impl)
    primitive.def_abstract_eval(abstract)
    mlir.register_lowering(primitive, mlir.lower_fun(impl, multiple_results=True))
    _register_lowering(primitive)
    _PRIMITIVE["primitive"] = primitive
    return primitive


def _register_lowering(primitive) -> None:
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    class GroupQueryAttentionPlugin(PrimitiveLeafPlugin):
        _PRIM: ClassVar = primitive

        @staticmethod
        def abstract_eval(*operands, **params):
            return primitive.abstract_eval(*operands, **params)

        def lower(self, ctx, eqn) -> None:
            lower_group_query_attention(ctx, eqn)

    register_primitive(jaxpr_primitive=primitive.name, since="onnxforge", component="attention")(
        GroupQueryAttentionPlugin
    )


def lower_group_query_attention(ctx, eqn) -> None:
    from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape

    from onnxforge.sparse_moe_onnx import Builder

    values = [ctx.get_value_for_var(v, name_hint=ctx.fresh_name("gqa_in")) for v in eqn.invars]
    query, key, value, past_key, past_value, mask = values[:6]
    sinks = values[6] if eqn.params["sinks"] else None
    heads = int(eqn.invars[0].aval.shape[2])
    kv_heads = int(eqn.invars[1].aval.shape[2])
    b = Builder(ctx, query.type.dtype)
    int64, int32, boolean = (b.ir.DataType.INT64, b.ir.DataType.INT32, b.ir.DataType.BOOL)

    def i64(values, hint):
        return b.const(values, hint, np.int64)

    packed = i64([0, 0, -1], "gqa_packed")  # [b, s, h, d] -> [b, s, h * d]
    q, k, v = (b.op("Reshape", x, packed) for x in (query, key, value))
    # Every row's buffer is the whole mask: seqlens_k = total - 1, total_sequence_length = total.
    mask_shape = b.op("Shape", mask, element=int64)
    total = b.op("Gather", mask_shape, i64([1], "gqa_total_axis"), axis=0, element=int64)
    batch = b.op("Gather", mask_shape, i64([0], "gqa_batch_axis"), axis=0, element=int64)
    last = b.op("Sub", total, i64([1], "gqa_one"), element=int64)
    seqlens = b.op("Cast", b.op("Expand", last, batch, element=int64), to=int32, element=int32)
    total_scalar = b.op("Cast", b.op("Squeeze", total, element=int64), to=int32, element=int32)
    # Padding as an additive bias [batch, 1, sequence, total].
    real = b.op("Greater", mask, b.const(0, "gqa_zero", mask.type.dtype.numpy()), element=boolean)
    bias = b.op("Where", real, b.const(0.0, "gqa_seen"), b.const(MASK_VALUE, "gqa_masked"))
    bias = b.op("Unsqueeze", bias, i64([1, 2], "gqa_bias_axes"))  # [b, 1, 1, t]
    rows = b.op(
        "Gather", b.op("Shape", query, element=int64), i64([1], "gqa_rows"), axis=0, element=int64
    )
    bias_shape = b.op("Concat", batch, i64([1], "gqa_one_head"), rows, total, axis=0, element=int64)
    bias = b.op("Expand", bias, bias_shape)
    inputs = [q, k, v, past_key, past_value, seqlens, total_scalar, None, None, None, bias]
    if sinks is not None:
        inputs.append(sinks)
    attributes = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": eqn.params["scale"]}
    if eqn.params["window"]:
        attributes["local_window_size"] = eqn.params["window"]
    name = ctx.fresh_name("GroupQueryAttention")
    out, present_key, present_value = ctx.builder.GroupQueryAttention(
        *inputs,
        _domain=lowering.CONTRIB_DOMAIN,
        _outputs=[name, f"{name}_present_key", f"{name}_present_value"],
        **attributes,
    )
    out_var, key_var, value_var = eqn.outvars
    batch_dim, rows_dim = eqn.invars[0].aval.shape[:2]
    packed_shape = (batch_dim, rows_dim, heads * int(eqn.invars[0].aval.shape[3]))
    for result, shape in (
        (out, packed_shape),
        (present_key, key_var.aval.shape),
        (present_value, value_var.aval.shape),
    ):
        result.type = b.ir.TensorType(past_key.type.dtype)
        _stamp_type_and_shape(result, tuple(shape))
        b._ensure(ctx, result)
    ctx.bind_value_for_var(key_var, present_key)
    ctx.bind_value_for_var(value_var, present_value)
    shaped = b.op("Reshape", out, b.op("Shape", query, element=int64))  # [b, s, h, d]
    _stamp_type_and_shape(shaped, tuple(out_var.aval.shape))
    ctx.bind_value_for_var(out_var, shaped)
