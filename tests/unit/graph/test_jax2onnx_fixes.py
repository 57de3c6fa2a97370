"""Our jax2onnx overrides: what jax2onnx 0.17.1 rejects traces, and ONNX Runtime agrees."""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort

from onnxforge.graph import signature, tracing


def _reshape_with_out_sharding(token_ids):
    x = token_ids.astype(jnp.float32)
    return jnp.reshape(x, (x.shape[0], x.shape[1], 1), out_sharding=None) * 2.0


def test_reshape_with_out_sharding_exports_and_matches_jax(tmp_path):
    model_ir = tracing.trace(_reshape_with_out_sharding, "reshape", 23)  # installs the override
    tracing.save(model_ir, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    ids = np.arange(12, dtype=signature.INPUT_DTYPE).reshape(3, 4)
    (got,) = session.run(None, signature.feeds(ids))
    np.testing.assert_array_equal(got, np.asarray(_reshape_with_out_sharding(ids)))


def test_without_the_override_jax2onnx_rejects_out_sharding():
    """Proves the override is what makes the test above pass (and tells us when jax2onnx
    has fixed it upstream: then this fails and the override can go)."""
    from jax2onnx import to_onnx
    from jax2onnx.plugins.jax.numpy.reshape import JnpReshapePlugin

    from onnxforge.graph import jax2onnx_fixes

    jax2onnx_fixes.install()
    overridden = JnpReshapePlugin.binding_specs
    JnpReshapePlugin.binding_specs = classmethod(jax2onnx_fixes.ORIGINAL_RESHAPE_SPECS)
    try:
        spec = [jax.ShapeDtypeStruct(("B", 4), jnp.int32)]
        try:
            to_onnx(_reshape_with_out_sharding, spec, return_mode="ir")
        except TypeError as err:
            assert "out_sharding" in str(err)
        else:
            raise AssertionError("jax2onnx now takes out_sharding: remove our override")
    finally:
        JnpReshapePlugin.binding_specs = overridden


def _zeros_with_out_sharding(token_ids):
    x = token_ids.astype(jnp.float32)
    return x[..., None] + jnp.zeros((1, 1, 3), jnp.float32, out_sharding=None)


def test_other_numpy_functions_take_out_sharding_too(tmp_path):
    model_ir = tracing.trace(_zeros_with_out_sharding, "zeros", 23)
    tracing.save(model_ir, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    ids = np.arange(6, dtype=signature.INPUT_DTYPE).reshape(2, 3)
    (got,) = session.run(None, signature.feeds(ids))
    np.testing.assert_array_equal(got, np.asarray(_zeros_with_out_sharding(ids)))
