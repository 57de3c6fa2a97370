"""The ONNX side of a sparse MoE primitive: each expert runs on the tokens routed to it.

Per expert: Gather its column of the ``chosen`` mask, NonZero -> the rows, Gather those
tokens, the expert's own math (the family's ``expert`` function), scale by the routing
weights, ScatterND-add back. Plain ONNX (no Loop, If or contrib op) that ONNX Runtime's CPU
and CUDA providers run; FLOPs grow with the routed tokens, not the number of experts.

A primitive's inputs are ``x [tokens, d]``, ``weights [tokens, experts]``, ``chosen
[tokens, experts]`` (bool) and then the expert kernels, each ``[experts, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

_REGISTERED: dict[str, Any] = {}


class Builder:
    """Typed ops and constants in the converter's graph, for an ``expert`` function."""

    def __init__(self, ctx, dtype) -> None:
        import onnx_ir as ir
        from jax2onnx.plugins._ir_shapes import _ensure_value_metadata

        self.ctx, self.dtype, self.ir, self._ensure = ctx, dtype, ir, _ensure_value_metadata

    def op(self, name: str, *inputs, element=None, **attrs):
        value = getattr(self.ctx.builder, name)(
            *inputs, **attrs, _outputs=[self.ctx.fresh_name(name)]
        )
        value.type = self.ir.TensorType(element or self.dtype)
        self._ensure(self.ctx, value)
        return value

    def const(self, value, hint: str, dtype=None):
        """An initializer; ``dtype`` defaults to the activations' (scalars of the math)."""
        array = np.asarray(value, dtype or self.ir.DataType(self.dtype).numpy())
        return self.ctx.builder.add_initializer_from_array(self.ctx.fresh_name(hint), array)


# expert(builder, x_e [rows, d], this expert's kernels, the primitive's params) -> y [rows, d]
Expert = Callable[[Builder, Any, list[Any], dict[str, Any]], Any]


def register(primitive, expert: Expert) -> None:
    """Register ``primitive``'s jax2onnx lowering once (jax2onnx loads only when exporting)."""
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
            lower_routed_experts(ctx, eqn, expert)

    register_primitive(jaxpr_primitive=primitive.name, since="onnxforge", component="moe")(
        SparseMoePlugin
    )
    _REGISTERED[primitive.name] = SparseMoePlugin


def lower_routed_experts(ctx, eqn, expert: Expert) -> None:
    x_var, weights_var, chosen_var, *kernel_vars = eqn.invars
    (out_var,) = eqn.outvars
    x, weights, chosen, *kernels = (
        ctx.get_value_for_var(v, name_hint=ctx.fresh_name("moe_in"))
        for v in (x_var, weights_var, chosen_var, *kernel_vars)
    )
    b = Builder(ctx, x.type.dtype)
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
    ctx.bind_value_for_var(out_var, b.op("Identity", out))
