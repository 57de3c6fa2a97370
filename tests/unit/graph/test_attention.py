"""RoPE in an ``ort`` export (``attention.rotary``): ONNX's RotaryEmbedding over the
family's cos/sin values gives the family's own rotation; where the export's opset or operator
set has no such op, the family's code is traced unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxforge.families.gpt_oss.model import _rotate_heads
from onnxforge.graph import attention, jax2onnx_plugins, lowering, passes

HEADS, HEAD_DIM = 3, 8


def rope(x, positions):
    """GPT-OSS's rotation of ``x [B, S, heads, head_dim]`` at ``positions [B, S]``."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, HEAD_DIM, 2) / HEAD_DIM))
    angles = positions[..., None] * inv_freq
    return attention.rotary(_rotate_heads, x, jnp.cos(angles), jnp.sin(angles))


def export(kind: str, opset: int) -> ir.Model:
    from jax2onnx import to_onnx

    jax2onnx_plugins.install()
    spec = [
        jax.ShapeDtypeStruct(("B", "S", HEADS, HEAD_DIM), jnp.float32),
        jax.ShapeDtypeStruct(("B", "S"), jnp.float32),
    ]
    with lowering.ops(kind, opset):
        model = to_onnx(rope, spec, opset=opset, return_mode="ir")
    passes.collapse_reshapes(model)
    return model


@pytest.mark.parametrize(("kind", "opset", "fused"), [("ort", 23, True), ("ort", 21, False),
                                                      ("plain", 23, False)])  # fmt: skip
def test_rotary_embedding_gives_the_family_s_rotation(kind, opset, fused):
    model = export(kind, opset)
    ops = [node.op_type for node in model.graph]
    assert ("RotaryEmbedding" in ops) == fused
    if fused:  # one node, no head split around it
        assert ops.count("RotaryEmbedding") == 1 and "Split" not in ops
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString())
    rng = np.random.default_rng(0)
    for batch, length in ((2, 5), (1, 1)):
        x = rng.standard_normal((batch, length, HEADS, HEAD_DIM)).astype(np.float32)
        positions = rng.integers(0, 300, (batch, length)).astype(np.float32)  # any positions
        expected = np.asarray(rope(jnp.asarray(x), jnp.asarray(positions)))
        names = [value.name for value in model.graph.inputs]
        got = session.run(None, dict(zip(names, (x, positions), strict=True)))[0]
        np.testing.assert_allclose(got, expected, atol=2e-5)
