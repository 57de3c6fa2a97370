"""MaxText's routed MoE (Mixtral), sparse in ONNX: each token runs only its top-k experts.

MaxText's own sparse path (``sparse_matmul``: permute, ``ragged_dot``/megablox, unpermute,
inside ``shard_map`` with a dropless ``lax.cond``) does not export: jax2onnx lowers
``ragged_dot`` for one group only. Its dense path (``dense_matmul``) runs every expert on every
token. So ``RoutedMoE.dense_matmul`` is replaced, for KV exports, by MaxText's own routing
(``get_topk``, ``reshape_and_update_weights``) followed by one JAX primitive,
``maxtext_sparse_moe``: in JAX it is exactly MaxText's dense computation (every expert,
weighted by the combine weights, zero off the top k); jax2onnx lowers it to plain ONNX
(``onnxforge.graph.moe``, shared with GPT-OSS's), per expert ``e``:

    rows = NonZero(chosen[:, e]); x_e = Gather(x, rows)
    y_e = (silu(x_e @ wi_0[e]) * (x_e @ wi_1[e])) @ wo[e] * weight[rows, e]
    out = ScatterND(out, rows, y_e, reduction=add)

FLOPs ∝ tokens × k. With ``ops: ort``, one ``com.microsoft.MoE`` instead (``_fused``). Only
MaxText's SwiGLU experts (``mlp_activations: [silu, linear]``, no bias, no capacity) take this
path; any other MoE keeps MaxText's dense one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

from onnxforge.families.maxtext import patches
from onnxforge.graph import moe

PRIMITIVE = Primitive("maxtext_sparse_moe")


def _dense(x, weights, chosen, logits, wi_0, wi_1, wo, *, k):
    """MaxText's dense_matmul for SwiGLU experts: x [..., emb], weights [..., experts]."""
    del chosen, logits, k  # the weights are zero wherever it is False, and come from logits
    highest = jax.lax.Precision.HIGHEST
    gate = jnp.einsum("...m,emh->...eh", x, wi_0, precision=highest)
    up = jnp.einsum("...m,emh->...eh", x, wi_1, precision=highest)
    out = jnp.einsum("...eh,ehm->...em", jax.nn.silu(gate) * up, wo, precision=highest)
    return jnp.einsum("...em,...e->...m", out, weights, precision=highest)


PRIMITIVE.def_impl(_dense)
PRIMITIVE.def_abstract_eval(lambda x, *_, **__: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(PRIMITIVE, mlir.lower_fun(_dense, multiple_results=False))


def sparse_moe(x, weights, chosen, logits, wi_0, wi_1, wo, *, k: int):
    """``[..., emb]`` -> ``[..., emb]``; ``chosen [..., experts]`` (bool): the
    router's top ``k``, which the plain ONNX lowering routes by; ``logits``: the gate's, whose
    top-k softmax ``weights`` is (Mixtral's routing; the fused MoE op routes by them)."""
    moe.register(PRIMITIVE, _expert, _fused)
    weights, logits = weights.astype(x.dtype), logits.astype(x.dtype)
    return PRIMITIVE.bind(x, weights, chosen, logits, wi_0, wi_1, wo, k=int(k))


def supports(moe) -> bool:
    """Whether MaxText's ``RoutedMoE`` is one this path computes exactly."""
    cfg = moe.config
    return (
        tuple(cfg.mlp_activations) == ("silu", "linear")
        and not cfg.mlp_bias
        and cfg.capacity_factor <= 0
        and str(cfg.decoder_block.value) == "mixtral"
        and moe.wi_0_sparsity_module is None
        and getattr(moe, "per_expert_scale", None) is None
    )


@patches.replaces(
    "maxtext.layers.moe:RoutedMoE.dense_matmul",
    "sparse",
    "every expert on every token; the sparse primitive runs each on its routed tokens only",
)
def _sparse_dense_matmul(
    self, inputs, gate_logits, pre_bias_logits, w0_kernel, w1_kernel, wo_kernel, *args, **kw
):
    """``RoutedMoE.dense_matmul`` with MaxText's routing and the sparse primitive."""
    if not supports(self) or kw.get("forced_routed_experts") is not None:
        return patches.original_of(_sparse_dense_matmul)(
            self, inputs, gate_logits, pre_bias_logits, w0_kernel, w1_kernel, wo_kernel, *args, **kw
        )
    top_k_weights, top_k_indices = self.get_topk(gate_logits, pre_bias_logits, self.rngs)
    weights = self.reshape_and_update_weights(top_k_weights, top_k_indices)  # [b, s, experts]
    # A float one-hot: ONNX Runtime's CPU OneHot has no int32-output kernel.
    chosen = jax.nn.one_hot(top_k_indices, self.num_experts, dtype=self.dtype).sum(-2) > 0
    out = sparse_moe(
        inputs,
        weights,
        chosen,
        gate_logits,
        w0_kernel.astype(self.dtype),
        w1_kernel.astype(self.dtype),
        wo_kernel.astype(self.dtype),
        k=top_k_indices.shape[-1],
    )
    return out.astype(self.dtype), None, None


def patch_sparse() -> None:
    """Route MaxText's dense MoE through the sparse primitive: the ``sparse`` group of
    ``patches`` (idempotent)."""
    patches.apply("sparse")


def _expert(b, x_e, kernels, params):
    """One expert's SwiGLU (MaxText's silu(x wi_0) * (x wi_1), then wo) in ONNX ops."""
    wi_0, wi_1, wo = kernels
    gate = b.op("MatMul", x_e, wi_0)
    up = b.op("MatMul", x_e, wi_1)
    hidden = b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up)
    return b.op("MatMul", hidden, wo)


def _fused(b, kernels, params) -> moe.FusedExperts:
    """The experts as ``com.microsoft.MoE`` takes them: its SwiGLU with alpha 1 and beta 0 is
    ``silu(gate) * up``, unclamped."""
    wi_0, wi_1, wo = kernels
    return moe.FusedExperts(
        fc1=moe.interleave(b, wi_0, wi_1),
        fc2=b.op("Transpose", wo, perm=[0, 2, 1]),
        attributes={"activation_alpha": 1.0, "activation_beta": 0.0},
    )
