"""Our fixes to jax2onnx 0.17.1's plugins, installed before every export (README: known
issues; each one is reported upstream).

- ``jnp.reshape(..., out_sharding=...)``: jax2onnx replaces ``jnp.reshape`` while it traces
  with a function that takes only ``(a, newshape, order)``, so models that pass JAX's
  ``out_sharding`` (MaxText's Qwen3-Next and Qwen3.5 gated delta net) fail to trace with
  ``TypeError: ... unexpected keyword argument 'out_sharding'``. A sharding says where the
  result lives, never what it holds, and an ONNX graph has no devices: the override accepts
  the keyword (and ``copy``) and traces the same reshape.
- Likewise every other ``jax.numpy`` function jax2onnx replaces without an ``out_sharding``
  keyword (``jnp.zeros`` in the same models): the keyword is accepted and dropped.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

_INSTALLED = "_onnxforge_accepts_out_sharding"
ORIGINAL_RESHAPE_SPECS = None  # jax2onnx's own JnpReshapePlugin.binding_specs (for tests)


def install() -> None:
    """Install every override (idempotent)."""
    _reshape_accepts_out_sharding()
    _numpy_functions_accept_out_sharding()


def _drops_out_sharding(traced):
    """``traced`` (jax2onnx's stand-in for a jnp function), taking and dropping
    ``out_sharding`` where it has no such parameter."""
    try:
        parameters = inspect.signature(traced).parameters.values()
    except (TypeError, ValueError):
        return traced
    names = {p.name for p in parameters}
    if "out_sharding" in names or any(p.kind is p.VAR_KEYWORD for p in parameters):
        return traced

    @functools.wraps(traced)
    def call(*args, out_sharding=None, **kwargs):
        del out_sharding  # no devices in an ONNX graph
        return traced(*args, **kwargs)

    return call


def _numpy_functions_accept_out_sharding() -> None:
    from jax2onnx.plugins._patching import MonkeyPatchSpec
    from jax2onnx.plugins.plugin_system import PLUGIN_REGISTRY, import_all_plugins

    import_all_plugins()
    for plugin in {type(p) for p in PLUGIN_REGISTRY.values()}:
        if plugin.__dict__.get(_INSTALLED) or "binding_specs" not in plugin.__dict__:
            continue
        original = plugin.binding_specs.__func__

        def binding_specs(cls, original=original):
            specs = []
            for spec in original(cls):
                if isinstance(spec, MonkeyPatchSpec) and spec.target == "jax.numpy":
                    make = spec.make_value
                    spec = MonkeyPatchSpec(
                        spec.target,
                        spec.attr,
                        lambda orig, make=make: _drops_out_sharding(make(orig)),
                        spec.delete_if_missing,
                    )
                specs.append(spec)
            return specs

        plugin.binding_specs = classmethod(binding_specs)
        setattr(plugin, _INSTALLED, True)


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
