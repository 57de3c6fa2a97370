"""Our lowerings in front of jax2onnx's (``graph.jax2onnx_plugins``): the graphs they write, and
ONNX Runtime's numbers against JAX's at more than one size of the symbolic axes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxforge.graph import jax2onnx_plugins


def _export(fn, shape):
    from jax2onnx import to_onnx

    jax2onnx_plugins.install()
    return to_onnx(fn, [jax.ShapeDtypeStruct(shape, jnp.float32)], opset=23, return_mode="ir")


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString())
    return session.run(None, {model.graph.inputs[0].name: x})[0]


def _scaled_rows(x):  # a norm's scale and a per-row value, each broadcast by adding axes of 1
    scale = jnp.arange(1.0, 5.0)
    return x * scale[None, None, :] + x.sum(-1)[:, :, None]


def _broadcast_rows(x):  # a real broadcast: [B, S, 1] -> [B, S, 4]
    return jnp.broadcast_to(x[:, :, :1], x.shape) + 1.0


def test_adding_axes_of_one_is_an_unsqueeze_with_no_shape_arithmetic():
    model = _export(_scaled_rows, ("B", "S", 4))
    ops = [node.op_type for node in model.graph]
    assert "Unsqueeze" in ops
    assert not {"Shape", "Expand", "Concat"} & set(ops), ops
    for batch, length in ((2, 5), (1, 1)):
        x = np.random.default_rng(batch).standard_normal((batch, length, 4)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), np.asarray(_scaled_rows(x)), rtol=1e-6)


def test_a_real_broadcast_keeps_jax2onnx_lowering():
    model = _export(_broadcast_rows, ("B", "S", 4))
    assert "Expand" in [node.op_type for node in model.graph]
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), np.asarray(_broadcast_rows(x)), rtol=1e-6)


def _heads_and_back(x):  # [B, S, 8] -> [B, S, 2, 4] -> [B * S, 8] (two symbolic sizes merged)
    heads = x.reshape(x.shape[0], x.shape[1], 2, 4) * 2.0
    return heads.reshape(x.shape[0], x.shape[1], 8) + heads.reshape(-1, 8).sum()


def test_a_reshape_that_keeps_its_symbolic_axes_has_a_constant_target():
    from onnxforge.graph.jax2onnx_plugins import reshape_target

    assert reshape_target(("B", "S", 8), ("B", "S", 2, 4)) == [0, 0, 2, 4]
    assert reshape_target(("B", "S", 8), ("BS", 8)) == [-1, 8]
    assert reshape_target(("B", "S"), ("S", "B")) is None  # two sizes it cannot copy
    model = _export(_heads_and_back, ("B", "S", 8))
    reshapes = [node for node in model.graph if node.op_type == "Reshape"]
    assert len(reshapes) == 3 and all(node.inputs[1].const_value is not None for node in reshapes)
    assert "Shape" not in [node.op_type for node in model.graph]
    for batch, length in ((2, 5), (1, 1)):
        x = np.random.default_rng(batch).standard_normal((batch, length, 8)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), np.asarray(_heads_and_back(x)), rtol=1e-5)
