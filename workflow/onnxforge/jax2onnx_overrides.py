"""Our fixes to jax2onnx 0.17.1's plugins, installed before every export (README: known
issues; each one is reported upstream).

- ``jnp.reshape(..., out_sharding=...)``: jax2onnx replaces ``jnp.reshape`` while it traces
  with a function that takes only ``(a, newshape, order)``, so models that pass JAX's
  ``out_sharding`` (MaxText's Qwen3-Next and Qwen3.5 gated delta net) fail to trace with
  ``TypeError: ... unexpected keyword argument 'out_sharding'``. A sharding says where the
  result lives, never what it holds, and an ONNX graph has no devices: the override accepts
  the keyword (and ``copy``) and traces the same reshape.
"""

from __future__ import annotations

from typing import Any

_INSTALLED = "_onnxforge_accepts_out_sharding"
ORIGINAL_RESHAPE_SPECS = None  # jax2onnx's own JnpReshapePlugin.binding_specs (for tests)


def install() -> None:
    """Install every override (idempotent)."""
    _reshape_accepts_out_sharding()


def _reshape_accepts_out_sharding() -> None:
    from jax2onnx.plugins._patching import MonkeyPatchSpec
    from jax2onnx.plugins.jax.numpy.reshape import JnpReshapePlugin

    global ORIGINAL_RESHAPE_SPECS
    if getattr(JnpReshapePlugin, _INSTALLED, False):
        return
    original = ORIGINAL_RESHAPE_SPECS = JnpReshapePlugin.binding_specs.__func__

    def with_keywords(spec: MonkeyPatchSpec) -> MonkeyPatchSpec:
        def make_value(orig: Any):
            traced = spec.make_value(orig)

            def reshape(a, shape=None, order="C", *, newshape=None, copy=None, out_sharding=None):
                del copy, out_sharding  # no devices or aliasing in an ONNX graph
                return traced(a, shape if shape is not None else newshape, order)

            return reshape

        return MonkeyPatchSpec(spec.target, spec.attr, make_value, spec.delete_if_missing)

    def binding_specs(cls):
        return [
            with_keywords(spec)
            if isinstance(spec, MonkeyPatchSpec) and spec.attr == "reshape"
            else spec
            for spec in original(cls)
        ]

    JnpReshapePlugin.binding_specs = classmethod(binding_specs)
    setattr(JnpReshapePlugin, _INSTALLED, True)
