"""Typed ops and constants added while jax2onnx converts a primitive (its ``ctx``): what the
plugins that lower attention and sparse experts build their nodes with.

(``passes`` rewrites a finished graph instead, where there is no converter context: its
``_Builder`` adds nodes in front of one node of an ``onnx_ir`` graph.)
"""

from __future__ import annotations

import numpy as np


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
