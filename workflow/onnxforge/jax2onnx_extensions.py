"""Lowerings jax2onnx 0.17 lacks, registered over its own plugins (``install()``).

- ``gather`` that is a slice with a symbolic size: ``x[:, p:p + s]`` with ``p`` and ``s``
  symbolic dimensions (a KV-cache step's past and sequence lengths) is, in ``jnp``, a
  ``gather`` of one start index with slice size ``s``; jax2onnx's gather needs constant slice
  sizes. It becomes ONNX ``Slice(x, start, start + s)``. Every other gather keeps jax2onnx's
  lowering.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INSTALLED: dict[str, Any] = {}


def _is_symbolic_slice(eqn: Any) -> bool:
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


def install() -> None:
    """Put the lowerings above in front of jax2onnx's (idempotent)."""
    if _INSTALLED:
        return
    from jax2onnx.plugins.jax.lax.gather import GatherPlugin  # registers jax2onnx's gather

    original = GatherPlugin.lower

    def lower(self, ctx, eqn):
        if _is_symbolic_slice(eqn):
            return _lower_symbolic_slice(ctx, eqn)
        return original(self, ctx, eqn)

    GatherPlugin.lower = lower
    _INSTALLED["gather"] = original
