"""The MaxText Mixtral's sparse MoE primitive: ONNX Runtime (each token through its top-k
experts only) against the dense JAX computation MaxText's dense_matmul does."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest


@pytest.mark.parametrize("operators", ["plain", "ort"])
def test_sparse_moe_in_onnx_matches_the_dense_experts(tmp_path, operators):
    import jax
    import jax.numpy as jnp
    import onnx
    import onnx_ir as ir
    from jax2onnx import to_onnx

    from onnxforge.families.maxtext.sparse_moe import _dense, sparse_moe
    from onnxforge.graph import jax2onnx_plugins, lowering, passes

    experts, k, emb, mlp = 6, 2, 16, 8
    rng = np.random.default_rng(0)
    wi_0, wi_1 = (rng.normal(0, 0.5, (experts, emb, mlp)).astype(np.float32) for _ in "01")
    wo = rng.normal(0, 0.5, (experts, mlp, emb)).astype(np.float32)
    router = rng.normal(0, 1, (emb, experts)).astype(np.float32)

    def layer(x):  # top-k routing and combine weights, as MaxText's get_topk gives them
        logits = x @ router
        top, indices = jax.lax.top_k(logits, k)
        one_hot = jax.nn.one_hot(indices, experts, dtype=x.dtype)
        weights = jnp.einsum("tk,tke->te", jax.nn.softmax(top, -1), one_hot)
        return sparse_moe(x, weights, one_hot.sum(1) > 0, logits, wi_0, wi_1, wo, k=k), weights

    x = rng.normal(0, 1, (21, emb)).astype(np.float32)  # more tokens than experts
    got_jax, weights = layer(jnp.asarray(x))
    expected = np.asarray(_dense(jnp.asarray(x), weights, None, None, wi_0, wi_1, wo, k=k))
    np.testing.assert_allclose(np.asarray(got_jax), expected, atol=1e-5)
    assert (np.asarray(weights) > 0).sum(1).tolist() == [k] * len(x)  # k experts per token

    spec = [jax.ShapeDtypeStruct(("tokens", emb), jnp.float32)]
    jax2onnx_plugins.install()  # the export's lowerings (a constant Reshape target)
    with lowering.ops(operators):
        model_ir = to_onnx(lambda h: layer(h)[0], spec, opset=23, return_mode="ir")
    passes.remove_unused(model_ir)  # as the export does: what no output needs
    model = ir.to_proto(model_ir)
    path = tmp_path / "moe.onnx"
    onnx.save(model, path)
    ops = [node.op_type for node in model.graph.node]
    if operators == "plain":
        assert ops.count("NonZero") == experts
        assert ops.count("MatMul") == 3 * experts  # wi_0, wi_1, wo: one product per expert
    else:  # one fused node routed by the logits themselves, no per-expert block
        assert ops.count("MoE") == 1 and "NonZero" not in ops and "ScatterND" not in ops
        assert "TopK" not in ops and "Log" not in ops
    experts_kernels = {t.name for t in model.graph.initializer if len(t.dims) == 3}
    assert not [
        n for n in model.graph.node if n.op_type == "Einsum" and set(n.input) & experts_kernels
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for tokens in (x, x[:1], x[:5]):
        got = session.run(None, {model.graph.input[0].name: tokens})[0]
        routed = layer(jnp.asarray(tokens))[1]
        dense = _dense(jnp.asarray(tokens), routed, None, None, wi_0, wi_1, wo, k=k)
        np.testing.assert_allclose(got, np.asarray(dense), atol=1e-5)
