"""Lowerings jax2onnx 0.17 lacks, registered over its own plugins (``install()``).

- ``gather`` that is a slice with a symbolic size: ``x[:, p:p + s]`` with ``p`` and ``s``
  symbolic dimensions (a KV-cache step's past and sequence lengths) is, in ``jnp``, a
  ``gather`` of one start index with slice size ``s``; jax2onnx's gather needs constant slice
  sizes. It becomes ONNX ``Slice(x, start, start + s)``. Every other gather keeps jax2onnx's
  lowering.
- ``broadcast_in_dim`` that only adds axes of size 1 (``x[:, None]``, a norm's scale brought to
  the activations' rank): ``Unsqueeze`` with constant axes. jax2onnx builds the target shape
  at runtime for any symbolic dimension (``Shape``, ``Gather``s, ``Concat``, ``Reshape``,
  ``Expand``: six nodes, 37 of them in a 4-layer Llama decode step); JAX's shapes say exactly
  when nothing is broadcast. Every other broadcast keeps jax2onnx's lowering.
- ``reshape`` to a shape with symbolic sizes: jax2onnx builds the target at runtime (``Shape``,
  ``Gather``/``Squeeze``/``Unsqueeze`` per axis, ``Concat``: about eight nodes, six per layer
  of a GPT-OSS step). Where each symbolic size of the result is the operand's at the same axis
  (``0``: copy it) but at most one (``-1``), the target is a constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INSTALLED: dict[str, Any] = {}


def _is_symbolic_slice(ctx: Any, eqn: Any) -> bool:
    """A gather that takes one contiguous block, with a size that is not a constant."""
    from jax import lax

    params = eqn.params
    numbers = params["dimension_numbers"]
    operand_shape = tuple(eqn.invars[0].aval.shape)
    indices_shape = tuple(eqn.invars[1].aval.shape)
    rank = len(operand_shape)
    sizes = tuple(params["slice_sizes"])
    starts = tuple(numbers.start_index_map)
    if params.get("mode") != lax.GatherScatterMode.PROMISE_IN_BOUNDS:
        return False
    if tuple(numbers.offset_dims) != tuple(range(rank)) or numbers.collapsed_slice_dims:
        return False
    if numbers.operand_batching_dims or numbers.start_indices_batching_dims:
        return False
    if indices_shape != (len(starts),):
        return False
    whole = all(sizes[axis] == operand_shape[axis] for axis in range(rank) if axis not in starts)
    symbolic = any(not isinstance(sizes[axis], (int, np.integer)) for axis in starts)
    return whole and symbolic


def _lower_symbolic_slice(ctx: Any, eqn: Any) -> None:
    import onnx_ir as ir
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
    from jax2onnx.plugins.jax.lax._index_utils import _const_i64, _lower_i64_vector

    data_var, indices_var = eqn.invars
    out_var = eqn.outvars[0]
    axes = tuple(eqn.params["dimension_numbers"].start_index_map)
    sizes = [eqn.params["slice_sizes"][axis] for axis in axes]
    data = ctx.get_value_for_var(data_var, name_hint=ctx.fresh_name("slice_data"))
    indices = ctx.get_value_for_var(indices_var, name_hint=ctx.fresh_name("slice_start"))
    out_spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name("slice_out"))
    starts = ctx.builder.Cast(indices, to=int(ir.DataType.INT64), _outputs=[ctx.fresh_name("st")])
    starts.type = ir.TensorType(ir.DataType.INT64)
    _stamp_type_and_shape(starts, (len(axes),))
    lengths = _lower_i64_vector(ctx, sizes, ctx.fresh_name("slice_size"))
    ends = ctx.builder.Add(starts, lengths, _outputs=[ctx.fresh_name("slice_end")])
    ends.type = ir.TensorType(ir.DataType.INT64)
    _stamp_type_and_shape(ends, (len(axes),))
    axes_value = _const_i64(ctx, np.asarray(axes, np.int64), ctx.fresh_name("slice_axes"))
    name = getattr(out_spec, "name", None) or ctx.fresh_name("slice")
    result = ctx.builder.Slice(data, starts, ends, axes_value, _outputs=[name])
    if data.type is not None:
        result.type = ir.TensorType(data.type.dtype)
    _stamp_type_and_shape(result, tuple(out_var.aval.shape))
    _ensure_value_metadata(ctx, result)
    ctx.bind_value_for_var(out_var, result)


def _is_rank_expansion(ctx: Any, eqn: Any) -> bool:
    """A broadcast_in_dim whose new axes are all of size 1 and whose operand axes keep their
    sizes (JAX's symbolic sizes compare exactly): the values are the operand's, reshaped.
    Not inside a loop body, where jax2onnx's broadcast carries loop-extent hints."""
    if getattr(ctx, "_loop_extent_hints_enabled", False):
        return False
    operand = eqn.invars[0].aval
    shape, kept = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
    if eqn.outvars[0].aval.dtype != operand.dtype or len(kept) != len(operand.shape):
        return False
    same = all(shape[axis] == size for axis, size in zip(kept, operand.shape, strict=True))
    ones = all(shape[axis] == 1 for axis in range(len(shape)) if axis not in kept)
    return same and ones and list(kept) == sorted(kept)


def _lower_rank_expansion(ctx: Any, eqn: Any) -> None:
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
    from jax2onnx.plugins.jax.lax._index_utils import _const_i64

    x_var, out_var = eqn.invars[0], eqn.outvars[0]
    kept = tuple(eqn.params["broadcast_dimensions"])
    new_axes = [axis for axis in range(len(eqn.params["shape"])) if axis not in kept]
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("unsq_in"))
    out_spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name("unsq_out"))
    name = getattr(out_spec, "name", None) or ctx.fresh_name("unsq_out")
    if new_axes:
        axes = _const_i64(ctx, np.asarray(new_axes, np.int64), ctx.fresh_name("unsq_axes"))
        result = ctx.builder.Unsqueeze(x, axes, _outputs=[name])
    else:
        result = ctx.builder.Identity(x, _outputs=[name])
    if x.type is not None:
        result.type = x.type
    _stamp_type_and_shape(result, tuple(out_var.aval.shape))
    _ensure_value_metadata(ctx, result)
    ctx.bind_value_for_var(out_var, result)


def reshape_target(operand: tuple, result: tuple) -> list[int] | None:
    """ONNX Reshape's constant target for ``operand`` -> ``result`` shapes (JAX's, symbolic
    sizes compared exactly), or None where a runtime shape is needed."""
    target, unknown = [], 0
    for axis, size in enumerate(result):
        if isinstance(size, (int, np.integer)):
            if size == 0:
                return None  # 0 would mean "copy"
            target.append(int(size))
        elif axis < len(operand) and operand[axis] == size:
            target.append(0)
        else:
            target.append(-1)
            unknown += 1
    return target if unknown <= 1 else None


def _is_constant_reshape(ctx: Any, eqn: Any) -> bool:
    params = eqn.params
    if len(eqn.invars) != 1 or params.get("dimensions") is not None:
        return False
    if params.get("order", "C") != "C":
        return False
    operand, result = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    symbolic = any(not isinstance(size, (int, np.integer)) for size in result)
    return symbolic and reshape_target(tuple(operand), tuple(result)) is not None


def _lower_constant_reshape(ctx: Any, eqn: Any) -> None:
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
    from jax2onnx.plugins.jax.lax._index_utils import _const_i64

    x_var, out_var = eqn.invars[0], eqn.outvars[0]
    target = reshape_target(tuple(x_var.aval.shape), tuple(out_var.aval.shape))
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("reshape_in"))
    out_spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name("reshape_out"))
    name = getattr(out_spec, "name", None) or ctx.fresh_name("reshape_out")
    shape = _const_i64(ctx, np.asarray(target, np.int64), ctx.fresh_name("reshape_target"))
    result = ctx.builder.Reshape(x, shape, _outputs=[name])
    if x.type is not None:
        result.type = x.type
    _stamp_type_and_shape(result, tuple(out_var.aval.shape))
    _ensure_value_metadata(ctx, result)
    ctx.bind_value_for_var(out_var, result)


def _in_front(plugin, lowerings) -> None:
    """``plugin.lower`` tries each ``(applies(ctx, eqn), lower)`` first, then jax2onnx's."""
    original = plugin.lower

    def lower(self, ctx, eqn):
        for applies, ours in lowerings:
            if applies(ctx, eqn):
                return ours(ctx, eqn)
        return original(self, ctx, eqn)

    plugin.lower = lower
    _INSTALLED[plugin.__name__] = original


def install() -> None:
    """Put the lowerings above in front of jax2onnx's (idempotent)."""
    if _INSTALLED:
        return
    from jax2onnx.plugins.jax.lax.broadcast_in_dim import BroadcastInDimPlugin
    from jax2onnx.plugins.jax.lax.gather import GatherPlugin  # registers jax2onnx's gather
    from jax2onnx.plugins.jax.lax.reshape import ReshapePlugin
    from jax2onnx.plugins.jax.numpy.reshape import JnpReshapePlugin

    _in_front(GatherPlugin, [(_is_symbolic_slice, _lower_symbolic_slice)])
    _in_front(BroadcastInDimPlugin, [(_is_rank_expansion, _lower_rank_expansion)])
    for plugin in (ReshapePlugin, JnpReshapePlugin):
        _in_front(plugin, [(_is_constant_reshape, _lower_constant_reshape)])
