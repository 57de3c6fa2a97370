"""MaxText as a KV-cache decoder: ``step(weights, input_ids, attention_mask, position_ids, past)
-> (logits, present)``, the contract of ``families.base.LoadedDecoder``, from MaxText's model.

MaxText generates with a chunked prefill: each chunk's attention sees the keys and values of
the chunks before it (``previous_chunk``) and its own, its causal mask offset by the length of
the previous chunks and padding masked by segment ids (``AttentionOp.generate_attention_mask``).
One step here is one such chunk: prefill is a chunk with nothing before it, a decode step a
chunk of one token. What MaxText keeps in its fixed-size ``KVCache`` variables
(``KVCache.kv_cache_chunked_prefill``) is passed in instead (``past``) and the keys and values
the chunk's attention used are passed out (``present``), through the per-layer ``kv_caches``
channel its unscanned decoder threads through every layer. Embedding, norms, projections, RoPE
at ``position_ids``, AttentionOp's mask and softmax, MLP or MoE and the logits are MaxText's
code, run in its ``prefill`` mode (a Mixtral's experts through ``sparse_moe``: MaxText's
routing, the exact dense math in JAX, top-k only in ONNX). Only the cache store is ours:
``Attention.update_kv_caches`` appends this chunk's keys to the ones passed in, which is what
MaxText's chunked-prefill cache returns from its buffer.

Segment ids are the attention mask (1 a token, 0 padding): a token attends only to tokens, so
a left-padded row gets the logits it gets alone. The cache axes are the contract's
``[batch, kv_heads, length, head_dim]``; MaxText's attention takes ``[batch, length, kv_heads,
head_dim]``.

In an ``ops: ort`` export, ``AttentionOp.__call__`` over that cache becomes one
GroupQueryAttention (``graph.attention``) wherever it computes the same thing
(``fused_attention_supported``), and MaxText's plain ``RotaryEmbedding`` (halves) one ONNX
RotaryEmbedding over MaxText's own frequencies (``_rotary_call``); everything around them stays
MaxText's.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from onnxforge.families.maxtext import patches


@jax.tree_util.register_pytree_node_class
@dataclass
class LayerCache:
    """One layer's cache for one step (MaxText's layout, [batch, length, kv_heads, head_dim]).

    A pytree of its inputs: MaxText's decoder passes each layer's cache through
    ``jax.checkpoint``; ``present`` is set on the copy inside and returned by the layer.
    """

    key: jax.Array
    value: jax.Array
    segments: jax.Array  # [batch, past + sequence]: the attention mask, as segment ids
    previous_chunk: jax.Array  # [batch, past]: MaxText's chunked-prefill offset
    present: tuple[jax.Array, jax.Array] | None = None
    fresh: tuple[jax.Array, jax.Array] | None = None  # this chunk's keys and values

    def tree_flatten(self):
        return (self.key, self.value, self.segments, self.previous_chunk), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


@jax.tree_util.register_pytree_node_class
@dataclass
class LayerCaches:
    """The caches of a MaxText layer that holds several Hugging Face layers, one per attention
    in the order the layer calls them (Gemma 2: its local attention, then its global one).
    MaxText's Gemma 2 layer hands its cache to its first attention only: each later one takes
    the next cache (``_PENDING``), and the last returns every present, which the layer then
    returns as its cache."""

    caches: tuple[LayerCache, ...]

    def tree_flatten(self):
        return (self.caches,), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


_ACTIVE: contextvars.ContextVar[LayerCache | None] = contextvars.ContextVar(
    "onnxforge_maxtext_layer_cache", default=None
)
# Within one layer's call: its LayerCaches and the index of the next attention's cache.
_PENDING: contextvars.ContextVar[tuple[LayerCaches, int] | None] = contextvars.ContextVar(
    "onnxforge_maxtext_pending_caches", default=None
)


@patches.replaces(
    "maxtext.layers.attentions:Attention.__call__",
    "cache",
    "with a LayerCache: chunked prefill over the cache passed in, its present handed back",
)
def _attention_call(self, *args, kv_cache=None, **kwargs):
    """``Attention.__call__``: with a ``LayerCache``, MaxText's chunked prefill over it (a
    layer's ``LayerCaches``: each of its attentions over the next one)."""
    return _call_with_cache(patches.original_of(_attention_call), self, args, kv_cache, kwargs)


@patches.replaces(
    "maxtext.layers.attention_mla:MLA.__call__",
    "cache",
    "with a LayerCache: chunked prefill over the cache passed in, its present handed back",
)
def _mla_call(self, *args, kv_cache=None, **kwargs):
    """``MLA.__call__`` (DeepSeek's multi-head latent attention, which overrides Attention's):
    as ``_attention_call``. With ``mla_naive_kvcache`` (MaxText's default) MLA caches its
    up-projected keys and values through ``Attention.update_kv_caches``, as other attentions
    do: that is what the decoder's cache holds."""
    return _call_with_cache(patches.original_of(_mla_call), self, args, kv_cache, kwargs)


@patches.replaces(
    "maxtext.models.deepseek:DeepSeekDenseLayer.__call__",
    "cache",
    "its attention gets the layer's LayerCache, and the layer returns the present",
)
def _deepseek_dense_layer_call(self, *args, kv_cache=None, **kwargs):
    """``DeepSeekDenseLayer.__call__``: ``_hand_cache_to_attention``."""
    original = patches.original_of(_deepseek_dense_layer_call)
    return _hand_cache_to_attention(original, self, args, kv_cache, kwargs)


@patches.replaces(
    "maxtext.models.deepseek:DeepSeekMoELayer.__call__",
    "cache",
    "its attention gets the layer's LayerCache, and the layer returns the present",
)
def _deepseek_moe_layer_call(self, *args, kv_cache=None, **kwargs):
    """``DeepSeekMoELayer.__call__``: ``_hand_cache_to_attention``."""
    original = patches.original_of(_deepseek_moe_layer_call)
    return _hand_cache_to_attention(original, self, args, kv_cache, kwargs)


def _hand_cache_to_attention(original, self, args, kv_cache, kwargs):
    """A decoder layer that neither hands its ``kv_cache`` to its attention nor returns what
    the attention gives back (MaxText's DeepSeek layers: their attention keeps its cache in
    its own variables): the attention takes the layer's cache as the next pending one
    (``_PENDING``), and the layer returns its present."""
    if not isinstance(kv_cache, LayerCache):
        return original(self, *args, kv_cache=kv_cache, **kwargs)
    token = _PENDING.set((LayerCaches((kv_cache,)), 0))
    try:
        out, _ = original(self, *args, kv_cache=None, **kwargs)
    finally:
        _PENDING.reset(token)
    if kv_cache.present is None:
        raise RuntimeError("MaxText's DeepSeek layer never ran its attention over the cache")
    return out, kv_cache.present


def _call_with_cache(original, self, args, kv_cache, kwargs):
    group = None
    if isinstance(kv_cache, LayerCaches):  # a layer's first attention
        _PENDING.set((kv_cache, 0))
    if not isinstance(kv_cache, LayerCache):
        if _PENDING.get() is None:
            return original(self, *args, kv_cache=kv_cache, **kwargs)
        group, index = _PENDING.get()
        kv_cache = group.caches[index]
        last = index + 1 == len(group.caches)
        _PENDING.set(None if last else (group, index + 1))
        group = group if last else None
    # Not every decoder layer forwards previous_chunk (Gemma's does not): the cache carries it.
    kwargs.update(model_mode="prefill", previous_chunk=kv_cache.previous_chunk)
    token = _ACTIVE.set(kv_cache)
    try:
        out, _ = original(self, *args, kv_cache=None, **kwargs)
    finally:
        _ACTIVE.reset(token)
    if kv_cache.present is None:
        raise RuntimeError("MaxText's attention never asked for its KV cache")
    if group is not None:  # the layer's last attention: every present of the layer
        return out, tuple(cache.present for cache in group.caches)
    return out, kv_cache.present


@patches.replaces(
    "maxtext.layers.attentions:Attention.update_kv_caches",
    "cache",
    "the previous chunks' keys and values from the cache passed in, not MaxText's buffer",
)
def _update_kv_caches(self, key, value, decoder_segment_ids, model_mode, previous_chunk):
    """What ``KVCache.kv_cache_chunked_prefill`` returns (the previous chunks' keys, values and
    segment ids, then this chunk's), from the cache passed in rather than its buffer."""
    cache = _ACTIVE.get()
    if cache is None:
        return patches.original_of(_update_kv_caches)(
            self, key, value, decoder_segment_ids, model_mode, previous_chunk
        )
    # MLA's keys and values have two widths (qk_nope + qk_rope_head_dim, v_head_dim): the
    # cache holds both zero-padded to the wider, one head_dim for both (as GenAI's config and
    # GroupQueryAttention have it), and MaxText gets them back at their own.
    widths = key.shape[-1], value.shape[-1]
    key, value = pad_to_width(key, cache.key.shape[-1]), pad_to_width(value, cache.value.shape[-1])
    # lax, not jnp: jax2onnx's jnp.concatenate gives a symbolic concat axis the first operand's
    # size (past_sequence, not past_sequence + sequence).
    keys = jax.lax.concatenate([cache.key, key.astype(cache.key.dtype)], 1)
    values = jax.lax.concatenate([cache.value, value.astype(cache.value.dtype)], 1)
    cache.present, cache.fresh = (keys, values), (key, value)
    return [(keys[..., : widths[0]], values[..., : widths[1]], cache.segments), None]


def pad_to_width(x: jax.Array, width: int) -> jax.Array:
    """``x [..., d]`` zero-padded on its last axis to the cache's ``width``: zero columns add
    nothing to a query's dot product nor to an attention-weighted sum, and are sliced off
    again before MaxText's attention sees them."""
    if x.shape[-1] > width:
        raise ValueError(f"{x.shape[-1]} wide does not fit a cache {width} wide")
    if x.shape[-1] == width:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def fused_attention_supported(op, sinks, bidirectional_mask) -> bool:
    """Whether MaxText's ``AttentionOp`` computes what GroupQueryAttention does: causal dot
    attention, unscaled (the query reaching AttentionOp is scaled already), global or
    sliding, no soft cap, sinks, chunks, MLA or quantized cache. Anything else keeps MaxText's
    own attention."""
    from maxtext.common.common_types import AttentionType

    return (
        op.attention_type in (AttentionType.GLOBAL, AttentionType.LOCAL_SLIDING)
        and not op.attn_logits_soft_cap
        and sinks is None
        and bidirectional_mask is None
        and not op.kv_quant
        and not getattr(op.config, "moba", False)
        and not getattr(op, "is_absorbed_mqa", False)
    )


@patches.replaces(
    "maxtext.layers.attention_op:AttentionOp.__call__",
    "cache",
    "in an ops: ort KV export, attention over the cache as one GroupQueryAttention",
)
def _attention_op_call(self, query, key, value, *args, **kwargs):
    """``AttentionOp.__call__``: in an ``ops: ort`` export, inside a KV step, MaxText's
    attention over the cache as one GroupQueryAttention (``graph.attention``)."""
    from maxtext.common.common_types import AttentionType

    from onnxforge.graph import attention, lowering

    cache = _ACTIVE.get()
    if cache is not None and len(args) < 5 and "previous_chunk" not in kwargs:
        # MLA does not forward previous_chunk: its causal mask would start at the cache's
        # first key rather than this chunk's first token.
        kwargs["previous_chunk"] = cache.previous_chunk
    sinks = kwargs.get("sinks", args[6] if len(args) > 6 else None)
    bidirectional = kwargs.get("bidirectional_mask", args[5] if len(args) > 5 else None)
    if (
        cache is None
        or cache.fresh is None
        or not lowering.fused()
        or not fused_attention_supported(self, sinks, bidirectional)
        or value.shape[-1] != key.shape[-1]  # MLA: MaxText's attention over its own widths
    ):
        return patches.original_of(_attention_op_call)(self, query, key, value, *args, **kwargs)
    original = patches.original_of(_attention_op_call)

    def dense(q, k, v, past_key, past_value, mask):  # MaxText's own attention (JAX's meaning)
        keys = jax.lax.concatenate([to_maxtext_layout(past_key), k], 1)
        values = jax.lax.concatenate([to_maxtext_layout(past_value), v], 1)
        rest = list(args)
        rest[3] = [(keys, values, mask), None]  # cached_values
        out = original(self, q, k, v, *rest, **kwargs)
        return out, to_maxtext_layout(keys), to_maxtext_layout(values)

    window = self.sliding_window_size if self.attention_type == AttentionType.LOCAL_SLIDING else 0
    fresh_key, fresh_value = cache.fresh
    out, present_key, present_value = attention.step_attention(
        dense,
        query,
        fresh_key.astype(cache.key.dtype),
        fresh_value.astype(cache.value.dtype),
        to_maxtext_layout(cache.key),
        to_maxtext_layout(cache.value),
        cache.segments,
        scale=1.0,
        window=window or 0,
    )
    cache.present = (to_maxtext_layout(present_key), to_maxtext_layout(present_value))
    return out


def _rotate_halves(module, x, cos, sin):
    """MaxText's ``RotaryEmbedding.apply_rotary`` of ``x [b, s, heads, d]`` by ``cos``/``sin
    [b, s, d / 2]``, widened to both halves as its ``__call__`` does."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    cos, sin = jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)
    return module.apply_rotary(x, cos, sin)


@patches.replaces(
    "maxtext.layers.embeddings:RotaryEmbedding.__call__",
    "cache",
    "in an ops: ort KV export (opset 23), the plain RoPE as ONNX's RotaryEmbedding",
)
def _rotary_call(self, inputs, position=None):
    """``RotaryEmbedding.__call__`` (the plain one on halves, not its subclasses): in an
    ``ops: ort`` export, inside a KV step, MaxText's rotation at its own frequencies
    (``timescale``) through ``attention.rotary``, one ONNX RotaryEmbedding."""
    import functools

    from maxtext.layers.embeddings import RotaryEmbedding

    from onnxforge.graph import attention, lowering

    if (
        _ACTIVE.get() is None
        or not lowering.fused(since=attention.ROTARY_OPSET)
        or type(self) is not RotaryEmbedding
        or position is None
        or inputs.ndim != 4
        or self.embedding_dims != inputs.shape[3]
    ):
        return patches.original_of(_rotary_call)(self, inputs, position)
    sinusoid = position[:, :, None] / self.timescale  # [b, s, d / 2], as MaxText's __call__
    cos, sin = jnp.cos(sinusoid).astype(inputs.dtype), jnp.sin(sinusoid).astype(inputs.dtype)
    rotate = functools.partial(_rotate_halves, self)
    out = attention.rotary(rotate, inputs, cos, sin)
    return out.astype(self.fprop_dtype) if self.cast_as_fprop_dtype else out


def patch_for_cache() -> None:
    """MaxText's attention, cache update, attention op and RoPE for the KV step: the
    ``cache`` group of ``patches``."""
    patches.apply("cache")


def to_maxtext_layout(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 1, 2)  # [b, kv_heads, length, d] <-> [b, length, kv_heads, d]


def run_step(model, input_ids, attention_mask, position_ids, past, per_layer: int = 1):
    """One chunk through MaxText's ``model`` (merged, called in ``prefill`` mode); ``past``
    holds one cache per Hugging Face layer, ``per_layer`` of them in each MaxText layer."""
    past_length = past[0][0].shape[2]
    segments = attention_mask.astype(jnp.int32)
    caches = [
        LayerCache(to_maxtext_layout(k), to_maxtext_layout(v), segments, segments[:, :past_length])
        for k, v in past
    ]
    if per_layer > 1:
        caches = [
            LayerCaches(tuple(caches[i : i + per_layer])) for i in range(0, len(caches), per_layer)
        ]
    logits = model(
        decoder_input_tokens=input_ids.astype(jnp.int32),
        decoder_positions=position_ids.astype(jnp.int32),
        decoder_segment_ids=segments[:, past_length:],
        enable_dropout=False,
        model_mode="prefill",
        kv_caches=caches,  # each entry is replaced by that layer's present
    )
    if any(isinstance(c, LayerCache | LayerCaches) for c in caches):
        raise RuntimeError("a MaxText layer did not pass its KV cache through")
    if per_layer > 1:
        caches = [present for layer in caches for present in layer]
    present = tuple((to_maxtext_layout(k), to_maxtext_layout(v)) for k, v in caches)
    return logits, present


def step_function(config, params, per_layer: int = 1) -> tuple[Any, Any]:
    """``(step(param_state, input_ids, attention_mask, position_ids, past) -> (logits,
    present), param_state)`` for MaxText's model built from ``config`` with ``params``
    (``per_layer``: the Hugging Face layers, so caches, in each MaxText layer)."""
    from onnxforge.families.maxtext import runtime, sparse_moe
    from onnxforge.graph import jax2onnx_plugins

    # MaxText's chunked-prefill mask slices rows [past : past + sequence] (a jnp slice with a
    # symbolic start, a gather jax2onnx cannot lower without this).
    jax2onnx_plugins.install()
    patch_for_cache()
    sparse_moe.patch_sparse()  # Mixtral: each token runs only its top-k experts
    merge, param_state = runtime.model_function(config, params)

    def step(weights, input_ids, attention_mask, position_ids, past):
        return run_step(merge(weights), input_ids, attention_mask, position_ids, past, per_layer)

    return step, param_state
