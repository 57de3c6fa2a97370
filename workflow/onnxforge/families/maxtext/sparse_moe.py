"""MaxText's routed MoE (Mixtral, GPT-OSS), sparse in ONNX: each token runs only its top-k
experts.

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
path, and GPT-OSS's: its biased, clamped SwiGLU (``apply_ffn_activation``) is the gpt_oss
family's primitive (``families.gpt_oss.sparse_moe``), given MaxText's kernels and routing. Any
other MoE keeps MaxText's dense one (in prefill mode, GPT-OSS's dense path exports a graph ONNX
Runtime refuses: a MatMul dimension mismatch in its dispatch einsums).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

from onnxforge.families.maxtext import patches
from onnxforge.graph import moe

PRIMITIVE = Primitive("maxtext_sparse_moe")
GPT_OSS_ALPHA = 1.702  # the sigmoid's slope in MaxText's GPT-OSS activation (apply_ffn_activation)


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
    """Whether MaxText's ``RoutedMoE`` is a Mixtral's, which this path computes exactly."""
    cfg = moe.config
    return (
        tuple(cfg.mlp_activations) == ("silu", "linear")
        and not cfg.mlp_bias
        and _dropless_and_dense(moe)
        and str(cfg.decoder_block.value) == "mixtral"
    )


def supports_gpt_oss(moe) -> bool:
    """Whether MaxText's ``RoutedMoE`` is GPT-OSS's (``apply_ffn_activation``'s clamped SwiGLU
    with biases), which the gpt_oss family's primitive computes exactly."""
    cfg = moe.config
    return (
        str(cfg.decoder_block.value) == "gpt_oss"
        and tuple(cfg.mlp_activations) == ("sigmoid", "linear")
        and cfg.mlp_bias
        and _dropless_and_dense(moe)
        and not cfg.norm_topk_prob
    )


def _dropless_and_dense(moe) -> bool:
    return (
        moe.config.capacity_factor <= 0
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
    kernels = (w0_kernel, w1_kernel, wo_kernel)
    mixtral, gpt_oss = supports(self), supports_gpt_oss(self)
    if not (mixtral or gpt_oss) or kw.get("forced_routed_experts") is not None:
        return patches.original_of(_sparse_dense_matmul)(
            self, inputs, gate_logits, pre_bias_logits, *kernels, *args, **kw
        )
    top_k_weights, top_k_indices = self.get_topk(gate_logits, pre_bias_logits, self.rngs)
    weights = self.reshape_and_update_weights(top_k_weights, top_k_indices)  # [b, s, experts]
    # A float one-hot: ONNX Runtime's CPU OneHot has no int32-output kernel.
    chosen = jax.nn.one_hot(top_k_indices, self.num_experts, dtype=self.dtype).sum(-2) > 0
    k = top_k_indices.shape[-1]
    if gpt_oss:  # dense_matmul(..., w0_bias, w1_bias, wo_bias, ...)
        from onnxforge.families.gpt_oss import sparse_moe as gpt_oss_moe

        w0_bias, w1_bias, wo_bias = (b.astype(self.dtype) for b in args[:3])
        w0, w1, wo = (w.astype(self.dtype) for w in kernels)
        out = gpt_oss_moe.sparse_moe(
            inputs, weights, chosen, gate_logits, w0, w0_bias, w1, w1_bias, wo, wo_bias,
            GPT_OSS_ALPHA, self.config.mlp_activations_limit, k=k,
        )  # fmt: skip
        return out.astype(self.dtype), None, None
    out = sparse_moe(
        inputs,
        weights,
        chosen,
        gate_logits,
        w0_kernel.astype(self.dtype),
        w1_kernel.astype(self.dtype),
        wo_kernel.astype(self.dtype),
        k=k,
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
