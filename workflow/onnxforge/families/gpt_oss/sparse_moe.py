"""GPT-OSS's mixture of experts, sparse in ONNX: each token runs only its top-k experts.

JAX has no data-dependent shapes, so it cannot gather "the tokens routed to expert e". The
layer is therefore one JAX primitive, ``gpt_oss_sparse_moe``: in JAX it computes the dense
form (every expert, weighted by the router's combine weights, zero off the top k: exact), and
jax2onnx lowers it (``onnxforge.graph.moe``, with ``_expert`` below) to plain ONNX
that ONNX Runtime's CPU and CUDA providers run, per expert ``e``:

    rows = NonZero(chosen[:, e])                  tokens that picked e, [n_e]
    x_e = Gather(x, rows)                         [n_e, hidden]
    y_e = SwiGLU(x_e @ W_gate[e], x_e @ W_up[e]) @ W_down[e] (+ biases), times the weights
    out = ScatterND(out, rows, y_e, reduction=add)

so the FLOPs are those of tokens x k experts, not tokens x experts, with no Loop or If: one
static block per expert, and an empty ``rows`` costs a few empty ops. With ``ops: ort`` it is
one ``com.microsoft.MoE`` instead (``_fused``: its SwiGLU with GPT-OSS's alpha, limit and
``up + 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

from onnxforge.graph import moe

PRIMITIVE = Primitive("gpt_oss_sparse_moe")


def swiglu(gate: jax.Array, up: jax.Array, alpha: float, limit: float) -> jax.Array:
    """GPT-OSS's clamped SwiGLU."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return gate * jax.nn.sigmoid(gate * alpha) * (up + 1)


def _dense(
    x, weights, chosen, logits, gate_k, gate_b, up_k, up_b, down_k, down_b, *, alpha, limit, k
):
    """The JAX meaning: x ``[..., hidden]``, combine weights ``[..., experts]`` (zero off the
    top k), every expert computed and weighted (as the model's dense layer)."""
    del chosen, logits, k  # the weights are zero wherever it is False, and come from logits
    gate = jnp.einsum("...h,ehi->...ei", x, gate_k) + gate_b
    up = jnp.einsum("...h,ehi->...ei", x, up_k) + up_b
    hidden = swiglu(gate, up, alpha, limit) * weights[..., None]
    return jnp.einsum("...ei,eih->...h", hidden, down_k) + weights @ down_b


PRIMITIVE.def_impl(_dense)
PRIMITIVE.def_abstract_eval(lambda x, *_, **__: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(PRIMITIVE, mlir.lower_fun(_dense, multiple_results=False))


def sparse_moe(
    x, weights, chosen, logits, gate_k, gate_b, up_k, up_b, down_k, down_b, alpha, limit, *, k
):
    """``[..., hidden]`` -> ``[..., hidden]``; ``chosen [..., experts]`` (bool): the
    router's top ``k``, which the plain ONNX lowering routes by; ``logits``: the router's, whose
    top-k softmax ``weights`` is (the fused MoE op routes by them)."""
    moe.register(PRIMITIVE, _expert, _fused)
    return PRIMITIVE.bind(
        x,
        weights.astype(x.dtype),
        chosen,
        logits.astype(x.dtype),
        gate_k,
        gate_b,
        up_k,
        up_b,
        down_k,
        down_b,
        alpha=float(alpha),
        limit=float(limit),
        k=int(k),
    )


def _expert(b, x_e, kernels, params):
    """One expert's SwiGLU (GPT-OSS's clamped form, ``swiglu``) in ONNX ops."""
    gate_k, gate_b, up_k, up_b, down_k, down_b = kernels
    alpha, limit = params["alpha"], params["limit"]
    gate = b.op("Add", b.op("MatMul", x_e, gate_k), gate_b)
    up = b.op("Add", b.op("MatMul", x_e, up_k), up_b)
    limit_c = b.const(limit, "moe_limit")
    gate = b.op("Min", gate, limit_c)
    up = b.op("Min", b.op("Max", up, b.const(-limit, "moe_neg_limit")), limit_c)
    glu = b.op("Mul", gate, b.op("Sigmoid", b.op("Mul", gate, b.const(alpha, "moe_alpha"))))
    hidden = b.op("Mul", glu, b.op("Add", up, b.const(1.0, "moe_one")))
    return b.op("Add", b.op("MatMul", hidden, down_k), down_b)


def _fused(b, kernels, params) -> moe.FusedExperts:
    """The experts as ``com.microsoft.MoE`` takes them: its SwiGLU with GPT-OSS's alpha, limit
    and ``up + 1`` (beta)."""
    gate_k, gate_b, up_k, up_b, down_k, down_b = kernels
    return moe.FusedExperts(
        fc1=moe.interleave(b, gate_k, up_k),
        fc1_bias=moe.interleave_bias(b, gate_b, up_b),
        fc2=b.op("Transpose", down_k, perm=[0, 2, 1]),
        fc2_bias=down_b,
        attributes={
            "activation_alpha": params["alpha"],
            "activation_beta": 1.0,
            "swiglu_limit": params["limit"],
        },
    )
