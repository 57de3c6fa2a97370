"""A KV step's attention as ONNX Runtime's fused ``com.microsoft.GroupQueryAttention``, for
exports with ``ops: ort`` (``onnxforge.graph.lowering``).

A family calls ``step_attention`` where its KV step attends: in a plain export (and in JAX) it
runs the family's own ``dense`` function, unchanged; in an ``ort`` export it binds the
primitive ``onnxforge_kv_attention``, which jax2onnx lowers to one GroupQueryAttention node:

- queries ``[batch, sequence, heads, head_dim]`` and this step's keys and values ``[batch,
  sequence, kv_heads, head_dim]`` (rotated already: by the family's RoPE code, or ``rotary``),
  the past ``[batch, kv_heads, past, head_dim]``; out come the attention ``[batch, sequence,
  heads, head_dim]`` and the present (past, then this step), as the family's ``dense`` gives;
- causal over cache indices, as our decoders are: query ``past + i`` sees key ``j <= past +
  i`` (``seqlens_k`` = total - 1 for every row, so GroupQueryAttention takes the whole buffer);
- padding (``attention_mask`` 0) as ``attention_bias``: minus 0.7 x the largest float, finite
  (MaxText's mask value), so that a row of padding only stays finite: a NaN there would reach
  the real rows through 0 x NaN in the next layer's values;
- a sliding window (``local_window_size``: key ``j`` seen while ``past + i - j < window``),
  per-head sinks (``head_sink``) and the logits' scale.

``rotary`` is RoPE the same way: the family's own rotation, or ONNX's ``RotaryEmbedding`` over
the family's cos/sin values (opset 23; a family on interleaved pairs keeps its own).

The four generation gates check it end to end (``f32-kv``), as the plain graph (``f32-kv-plain``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from onnxforge.graph import lowering

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
ROTARY_OPSET = 23  # ONNX's RotaryEmbedding
_PRIMITIVES: dict[str, Any] = {}


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
    primitive = _attention_primitive()
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


def _attention_primitive():
    import jax

    def impl(*operands, dense, **_):
        return dense(*operands[:6])

    def abstract(query, key, value, past_key, past_value, *_, **__):
        batch, kv_heads, past, head_dim = past_key.shape
        total = past + key.shape[1]
        present = jax.core.ShapedArray((batch, kv_heads, total, head_dim), past_key.dtype)
        return [jax.core.ShapedArray(query.shape, query.dtype), present, present]

    return _define("onnxforge_kv_attention", impl, abstract, lower_group_query_attention, True)


def rotary(rotate: Callable, x, cos, sin):
    """RoPE of ``x [batch, seq, heads, head_dim]`` by ``cos``/``sin [batch, seq, head_dim / 2]``
    (the family's values, at its positions): ``rotate(x, cos, sin)``, the family's code on
    halves, or in an ``ort`` export at opset 23 or later ONNX's ``RotaryEmbedding`` (halves,
    not interleaved), one node where ``rotate`` is eight."""
    if not lowering.fused(since=ROTARY_OPSET):
        return rotate(x, cos, sin)
    import jax

    def impl(x, cos, sin, *, rotate):
        return rotate(x, cos, sin)

    def abstract(x, *_, **__):
        return jax.core.ShapedArray(x.shape, x.dtype)

    return _define("onnxforge_rotary", impl, abstract, lower_rotary, False).bind(
        x, cos, sin, rotate=rotate
    )


def _define(name: str, impl, abstract, lower, multiple_results: bool):
    """A JAX primitive computed by ``impl`` (JAX, and jit) and lowered by ``lower(ctx, eqn)``
    (jax2onnx); defined once."""
    if name in _PRIMITIVES:
        return _PRIMITIVES[name]
    from jax.extend.core import Primitive
    from jax.interpreters import mlir
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    primitive = Primitive(name)
    primitive.multiple_results = multiple_results
    primitive.def_impl(impl)
    primitive.def_abstract_eval(abstract)
    mlir.register_lowering(primitive, mlir.lower_fun(impl, multiple_results=multiple_results))

    class Plugin(PrimitiveLeafPlugin):
        _PRIM: ClassVar = primitive

        abstract_eval = staticmethod(abstract)  # (jax2onnx patches the primitive's own)

        def lower(self, ctx, eqn) -> None:
            lower(ctx, eqn)

    register_primitive(jaxpr_primitive=name, since="onnxforge", component="attention")(Plugin)
    _PRIMITIVES[name] = primitive
    return primitive


def lower_rotary(ctx, eqn) -> None:
    from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape

    from onnxforge.graph.builder import Builder

    x, cos, sin = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("rope_in")) for v in eqn.invars
    )
    batch, seq, heads, head_dim = eqn.invars[0].aval.shape
    b = Builder(ctx, x.type.dtype)
    packed = b.op("Reshape", x, b.const([0, 0, -1], "rope_packed", np.int64))  # [b, s, h * d]
    _stamp_type_and_shape(packed, (batch, seq, heads * head_dim))
    rotated = b.op("RotaryEmbedding", packed, cos, sin, num_heads=heads, interleaved=0)
    _stamp_type_and_shape(rotated, (batch, seq, heads * head_dim))
    shape = b.const([0, 0, heads, head_dim], "rope_heads", np.int64)
    out = b.op("Reshape", rotated, shape)
    _stamp_type_and_shape(out, tuple(eqn.outvars[0].aval.shape))
    ctx.bind_value_for_var(eqn.outvars[0], out)


def lower_group_query_attention(ctx, eqn) -> None:
    from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape

    from onnxforge.graph.builder import Builder

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
