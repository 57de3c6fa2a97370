"""An export-ready GPT-OSS in Flax NNX.

Why our own and not jax2onnx's example (``plugins/examples/nnx/gpt_oss_flax``): that one fixes
the sequence length when it is built, takes one unbatched sequence and gathers expert weights
per token. Here batch and sequence are free (positions and masks come from
``lax.broadcasted_iota``), and the mixture of experts runs every expert on every token with a
dense gate, so memory grows with tokens x experts x intermediate width, never with tokens x
expert weights.

Parameter layout (what stage writes): kernels are ``[in, out]``; expert kernels carry the
expert axis first; the gate and up projections are stored apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from onnxforge.families.gpt_oss.config import GptOssConfig


def _param(shape: tuple[int, ...], dtype: jnp.dtype, fill: float = 0.0) -> nnx.Param:
    # Values always come from a checkpoint; the init only has to give shape and dtype.
    return nnx.Param(jnp.full(shape, fill, dtype=dtype))


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, dtype: jnp.dtype):
        self.scale = _param((size,), dtype, 1.0)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        normed = x32 * jax.lax.rsqrt(variance + self.eps)
        return (self.scale[...].astype(jnp.float32) * normed).astype(x.dtype)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding on halves (not interleaved pairs), as GPT-OSS applies it."""
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def _rotate_heads(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``_rotate`` of ``x [batch, seq, heads, head_dim]`` by ``cos``/``sin [batch, seq, half]``."""
    return _rotate(x, cos[:, :, None, :], sin[:, :, None, :])


class Attention(nnx.Module):
    def __init__(self, cfg: GptOssConfig, layer: int, dtype: jnp.dtype):
        q_dim = cfg.num_attention_heads * cfg.head_dim
        kv_dim = cfg.num_key_value_heads * cfg.head_dim
        h = cfg.hidden_size
        self.q_kernel, self.q_bias = _param((h, q_dim), dtype), _param((q_dim,), dtype)
        self.k_kernel, self.k_bias = _param((h, kv_dim), dtype), _param((kv_dim,), dtype)
        self.v_kernel, self.v_bias = _param((h, kv_dim), dtype), _param((kv_dim,), dtype)
        self.o_kernel, self.o_bias = _param((q_dim, h), dtype), _param((h,), dtype)
        self.sinks = _param((cfg.num_attention_heads,), dtype)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        sliding = cfg.layer_types[layer] == "sliding_attention"
        self.window = cfg.sliding_window if sliding else 0

    def _project(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """Rotated queries ``[batch, seq, heads, head_dim]``, rotated keys and values ``[batch,
        seq, kv_heads, head_dim]``; ``cos``/``sin`` are ``[batch, seq, half]``. (In an ``ort``
        export the rotation is ONNX's RotaryEmbedding: ``attention.rotary``.)"""
        from onnxforge.graph.attention import rotary

        batch, seq = x.shape[0], x.shape[1]
        q = (x @ self.q_kernel[...] + self.q_bias[...]).reshape(
            batch, seq, self.num_heads, self.head_dim
        )
        k = (x @ self.k_kernel[...] + self.k_bias[...]).reshape(
            batch, seq, self.num_kv_heads, self.head_dim
        )
        v = (x @ self.v_kernel[...] + self.v_bias[...]).reshape(
            batch, seq, self.num_kv_heads, self.head_dim
        )
        return rotary(_rotate_heads, q, cos, sin), rotary(_rotate_heads, k, cos, sin), v

    def _with_sinks(self, scores: jax.Array) -> jax.Array:
        """Softmax over the keys and each head's learned "sink" logit, which takes probability
        mass but no value; the sink's column dropped again."""
        groups = self.num_heads // self.num_kv_heads
        sinks = self.sinks[...].astype(jnp.float32).reshape(1, self.num_kv_heads, groups, 1, 1)
        sinks = jnp.broadcast_to(sinks, (*scores.shape[:-1], 1))
        # lax.concatenate: jax2onnx 0.17 mis-sizes jnp.concatenate along a symbolic axis.
        logits = jax.lax.concatenate([scores, sinks], dimension=scores.ndim - 1)
        return jax.nn.softmax(logits, axis=-1)[..., :-1]

    def step(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        attention_mask: jax.Array,
        past_key: jax.Array,
        past_value: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One KV-cache step: ``x [batch, seq, hidden]`` appended after ``past_key/value
        [batch, kv_heads, past, head_dim]``; returns the output and the grown cache.

        A query at cache index ``past + i`` sees key ``j`` if ``j <= past + i``, the key is
        real (``attention_mask``, over all ``past + seq`` keys) and, on a sliding layer,
        ``j > past + i - window``; indices count padding too, as transformers' masks do, so a
        left-padded row sees what it sees alone. The whole cache is kept: the window is a mask.
        """
        from onnxforge.graph.attention import step_attention

        batch, seq = x.shape[0], x.shape[1]
        q, k, v = self._project(x, cos, sin)
        out, key, value = step_attention(
            self._step_attention,
            q,
            k,
            v,
            past_key,
            past_value,
            attention_mask,
            scale=self.head_dim**-0.5,
            window=self.window,
            sinks=self.sinks[...],
        )
        out = out.reshape(batch, seq, self.num_heads * self.head_dim)
        return out @ self.o_kernel[...] + self.o_bias[...], (key, value)

    def _step_attention(self, q, k, v, past_key, past_value, attention_mask):
        """The attention of ``step`` (``attention.step_attention``'s ``dense``): queries
        ``[batch, seq, heads, head_dim]``, this step's keys and values ``[batch, seq, kv_heads,
        head_dim]`` after ``past_key/value``; returns the output and the grown cache."""
        batch, seq = q.shape[0], q.shape[1]
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(batch, seq, self.num_kv_heads, groups, self.head_dim)
        # lax.concatenate: jax2onnx 0.17 mis-sizes jnp.concatenate along a symbolic axis.
        key = jax.lax.concatenate([past_key, k.transpose(0, 2, 1, 3).astype(past_key.dtype)], 2)
        value = jax.lax.concatenate(
            [past_value, v.transpose(0, 2, 1, 3).astype(past_value.dtype)], 2
        )
        total = key.shape[2]
        scores = jnp.einsum("bqkgd,bksd->bkgqs", q, key).astype(jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        key_index = jax.lax.broadcasted_iota(jnp.int32, (seq, total), 1)
        query_index = jax.lax.broadcasted_iota(jnp.int32, (seq, total), 0) + (total - seq)
        visible = key_index <= query_index
        if self.window:
            visible = visible & (key_index > query_index - self.window)
        visible = visible[None] & (attention_mask[:, None, :] > 0)  # [batch, seq, total]
        scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = self._with_sinks(scores).astype(value.dtype)
        out = jnp.einsum("bkgqs,bksd->bqkgd", probs, value)
        return out.reshape(batch, seq, self.num_heads, self.head_dim), key, value

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        batch, seq = x.shape[0], x.shape[1]
        groups = self.num_heads // self.num_kv_heads
        q = (x @ self.q_kernel[...] + self.q_bias[...]).reshape(
            batch, seq, self.num_kv_heads, groups, self.head_dim
        )
        k = (x @ self.k_kernel[...] + self.k_bias[...]).reshape(
            batch, seq, self.num_kv_heads, self.head_dim
        )
        v = (x @ self.v_kernel[...] + self.v_bias[...]).reshape(
            batch, seq, self.num_kv_heads, self.head_dim
        )
        q = _rotate(q, cos[:, None, None, :], sin[:, None, None, :])
        k = _rotate(k, cos[:, None, :], sin[:, None, :])

        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        query_pos = jax.lax.broadcasted_iota(jnp.int32, (seq, seq), 0)
        key_pos = jax.lax.broadcasted_iota(jnp.int32, (seq, seq), 1)
        visible = key_pos <= query_pos
        if self.window:
            visible = visible & (key_pos > query_pos - self.window)
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)

        # Each head has a learned "sink" logit that takes probability mass but no value.
        sinks = self.sinks[...].astype(jnp.float32).reshape(1, self.num_kv_heads, groups, 1, 1)
        sinks = jnp.broadcast_to(sinks, (*scores.shape[:-1], 1))
        # lax.concatenate: jax2onnx 0.17 mis-sizes jnp.concatenate along a symbolic axis.
        logits = jax.lax.concatenate([scores, sinks], dimension=scores.ndim - 1)
        probs = jax.nn.softmax(logits, axis=-1)[..., :-1].astype(v.dtype)

        out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
        out = out.reshape(batch, seq, self.num_heads * self.head_dim)
        return out @ self.o_kernel[...] + self.o_bias[...]


class MixtureOfExperts(nnx.Module):
    """``sparse``: one ``sparse_moe`` primitive, dense in JAX, top-k only in ONNX."""

    def __init__(self, cfg: GptOssConfig, dtype: jnp.dtype, sparse: bool = False):
        e, h, i = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
        self.router_kernel, self.router_bias = _param((h, e), dtype), _param((e,), dtype)
        self.gate_kernel, self.gate_bias = _param((e, h, i), dtype), _param((e, i), dtype)
        self.up_kernel, self.up_bias = _param((e, h, i), dtype), _param((e, i), dtype)
        self.down_kernel, self.down_bias = _param((e, i, h), dtype), _param((e, h), dtype)
        self.top_k = cfg.num_experts_per_tok
        self.alpha = cfg.swiglu_alpha
        self.limit = cfg.swiglu_limit
        self.sparse = sparse

    def router_logits(self, x: jax.Array) -> jax.Array:
        return x @ self.router_kernel[...] + self.router_bias[...]

    def routing(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Dense combine weights [..., experts] (zero off the top k: the softmax of the top-k
        logits), the chosen experts and the router's logits."""
        router_logits = self.router_logits(x)
        top_values, top_experts = jax.lax.top_k(router_logits, self.top_k)
        top_weights = jax.nn.softmax(top_values.astype(jnp.float32), axis=-1)
        num_experts = router_logits.shape[-1]
        expert_ids = jax.lax.broadcasted_iota(jnp.int32, (1, num_experts), 1)
        chosen = top_experts[..., :, None] == expert_ids  # [..., k, experts]
        weights = jnp.sum(jnp.where(chosen, top_weights[..., :, None], 0.0), axis=-2)
        return weights.astype(x.dtype), top_experts, router_logits

    def __call__(self, x: jax.Array) -> jax.Array:
        weights, top_experts, logits = self.routing(x)
        if self.sparse:
            return self._sparse(x, weights, top_experts, logits)
        gate = jnp.einsum("bth,ehi->btei", x, self.gate_kernel[...]) + self.gate_bias[...]
        up = jnp.einsum("bth,ehi->btei", x, self.up_kernel[...]) + self.up_bias[...]
        gate = jnp.minimum(gate, self.limit)
        up = jnp.clip(up, -self.limit, self.limit)
        hidden = gate * jax.nn.sigmoid(gate * self.alpha) * (up + 1)
        # Weight before the down projection: the expert axis then folds into the contraction.
        hidden = hidden * weights[..., None]
        out = jnp.einsum("btei,eih->bth", hidden, self.down_kernel[...])
        return out + weights @ self.down_bias[...]

    def _sparse(self, x, weights, top_experts, logits) -> jax.Array:
        from onnxforge.families.gpt_oss.sparse_moe import sparse_moe

        expert_ids = jax.lax.broadcasted_iota(jnp.int32, (1, 1, 1, weights.shape[-1]), 3)
        chosen = jnp.any(top_experts[..., :, None] == expert_ids, axis=-2)
        return sparse_moe(
            x,
            weights,
            chosen,
            logits,
            self.gate_kernel[...],
            self.gate_bias[...],
            self.up_kernel[...],
            self.up_bias[...],
            self.down_kernel[...],
            self.down_bias[...],
            self.alpha,
            self.limit,
            k=top_experts.shape[-1],
        )


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: GptOssConfig, layer: int, dtype: jnp.dtype, sparse: bool = False):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.attention = Attention(cfg, layer, dtype)
        self.post_attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MixtureOfExperts(cfg, dtype, sparse)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        x = x + self.attention(self.input_norm(x), cos, sin)
        return x + self.mlp(self.post_attention_norm(x))


class GptOss(nnx.Module):
    """Token ids ``[batch, seq]`` to logits ``[batch, seq, vocab]``; ``sparse_moe``: experts
    as the ``sparse_moe`` primitive (top-k only in ONNX)."""

    def __init__(self, cfg: GptOssConfig, dtype: jnp.dtype = jnp.float32, sparse_moe=False):
        self.config = cfg
        self.dtype = dtype
        self.embedding = _param((cfg.vocab_size, cfg.hidden_size), dtype)
        self.layers = nnx.List(
            [DecoderLayer(cfg, i, dtype, sparse_moe) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = _param((cfg.hidden_size, cfg.vocab_size), dtype)

    def _rotary_tables(self, seq: int) -> tuple[jax.Array, jax.Array]:
        inv_freq, scale = self.config.rotary_inverse_frequencies()
        positions = jax.lax.broadcasted_iota(jnp.int32, (seq, 1), 0).astype(jnp.float32)
        angles = positions * jnp.asarray(inv_freq)[None, :]
        cos = (jnp.cos(angles) * scale).astype(self.dtype)
        sin = (jnp.sin(angles) * scale).astype(self.dtype)
        return cos, sin

    def __call__(
        self, token_ids: jax.Array, *, with_hidden_states: bool = False
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """Logits; with ``with_hidden_states`` also each layer's output (debug taps)."""
        cos, sin = self._rotary_tables(token_ids.shape[1])
        x = jnp.take(self.embedding[...], token_ids.astype(jnp.int32), axis=0)
        hidden_states = []
        for layer in self.layers:
            x = layer(x, cos, sin)
            hidden_states.append(x)
        logits = self.norm(x) @ self.lm_head[...]
        return (logits, hidden_states) if with_hidden_states else logits

    def decode_step(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        position_ids: jax.Array,
        past: list[tuple[jax.Array, jax.Array]],
    ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        """The KV-cache decoder (``signature``'s contract): rotary positions from
        ``position_ids``, key validity from ``attention_mask``; logits and the grown cache."""
        inv_freq, scale = self.config.rotary_inverse_frequencies()
        angles = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
        cos = (jnp.cos(angles) * scale).astype(self.dtype)
        sin = (jnp.sin(angles) * scale).astype(self.dtype)
        x = jnp.take(self.embedding[...], input_ids.astype(jnp.int32), axis=0)
        mask = attention_mask.astype(jnp.int32)
        present = []
        for layer, (past_key, past_value) in zip(self.layers, past, strict=True):
            out, cache = layer.attention.step(
                layer.input_norm(x), cos, sin, mask, past_key, past_value
            )
            x = x + out
            x = x + layer.mlp(layer.post_attention_norm(x))
            present.append(cache)
        return self.norm(x) @ self.lm_head[...], present

    def expert_choices(self, token_ids: jax.Array) -> list[jax.Array]:
        """The experts each layer's router picks per token, for parity of MoE routing."""
        cos, sin = self._rotary_tables(token_ids.shape[1])
        x = jnp.take(self.embedding[...], token_ids.astype(jnp.int32), axis=0)
        choices = []
        for layer in self.layers:
            h = x + layer.attention(layer.input_norm(x), cos, sin)
            choices.append(layer.mlp.routing(layer.post_attention_norm(h))[1])
            x = h + layer.mlp(layer.post_attention_norm(h))
        return choices
