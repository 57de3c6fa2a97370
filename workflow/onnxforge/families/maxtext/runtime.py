"""MaxText models on the CPU: its config system, its NNX model, and a pure forward function.

Only the ``maxtext`` environment imports this module (MaxText, TensorFlow and friends are not
in the ``jax`` environment).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before JAX starts: MaxText's savers shard over simulated CPU devices; one is enough here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from onnxforge.families.maxtext import patches

# What every onnxforge MaxText model is: unscanned (scan_layers=True does not export: jax2onnx
# has no random_split), plain dot-product attention, no dropout or remat, CPU, one process.
INFERENCE_SETTINGS: dict[str, Any] = {
    "override_model_config": True,
    "hardware": "cpu",
    "skip_jax_distributed_system": True,
    "scan_layers": False,
    "attention": "dot_product",
    "remat_policy": "none",
    "enable_dropout": False,
    "enable_checkpointing": False,
    "per_device_batch_size": 1,
    "max_target_length": 4096,
    "max_prefill_predict_length": 4096,
    "matmul_precision": "highest",
    "sparse_matmul": False,  # MoE: dense dispatch, which exports
    "megablox": False,
    "use_tokamax_gmm": False,
    "use_tokamax_splash": False,
    "quantization": "",
    "use_multimodal": False,
    "log_config": False,
    "run_name": "onnxforge",
}


def format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_argv(model_name: str, overrides: dict[str, Any], dtype: str = "float32") -> list[str]:
    """The command line MaxText's config system (and its converters' main) takes: base.yml,
    ``configs/models/<model_name>.yml`` by name, our inference settings, then ``overrides``."""
    settings = {
        **INFERENCE_SETTINGS,
        "model_name": model_name,
        "dtype": dtype,
        "weight_dtype": dtype,
        "base_output_directory": os.environ.get("TMPDIR", "/tmp"),
        **overrides,
    }
    argv = ["onnxforge", str(config_dir() / "base.yml")]
    return argv + [f"{key}={format_value(value)}" for key, value in settings.items()]


def make_config(model_name: str, overrides: dict[str, Any], dtype: str = "float32"):
    """MaxText's pyconfig for ``configs/models/<model_name>.yml`` with our overrides."""
    from maxtext.configs import pyconfig

    return pyconfig.initialize(config_argv(model_name, overrides, dtype))


def abstract_model(config) -> nnx.Module:
    from maxtext.utils import model_creation_utils

    return nnx.eval_shape(
        lambda: model_creation_utils.from_config(config, model_mode="train", rngs=nnx.Rngs(0))
    )


def weights_filter():
    """The model's variables a stage holds (``checkpoint.VARIABLE_COLLECTIONS``): its
    parameters (``nnx.Param``), and DeepSeek V3's routing bias (``MoEBiasVar``)."""
    from maxtext.layers.moe import MoEBiasVar

    from onnxforge.families.maxtext.checkpoint import VARIABLE_COLLECTIONS

    classes = {"params": nnx.Param, "MoEBiasVar": MoEBiasVar}
    return nnx.Any(*(classes[name] for name in VARIABLE_COLLECTIONS))


def param_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every parameter's path and shape, as the model built from ``config`` expects it."""
    params = nnx.state(abstract_model(config), weights_filter())
    return {tuple(map(str, path)): tuple(v.shape) for path, v in params.flat_state()}


@patches.replaces(
    "maxtext.layers.embeddings:attend_on_embedding",
    "export",
    "Embed.attend casts the table to bfloat16 whatever the dtype: mixed-dtype Einsum ORT rejects",
)
@patches.replaces(
    "maxtext.layers.nnx_decoders:attend_on_embedding",
    "export",
    "the decoder's tied-embedding logits: the same bfloat16 cast",
)
def _attend_on_embedding(query, embedding_table, attend_dtype, config, out_sharding=None):
    """Tied-embedding logits with the table in the model's dtype, not always bfloat16.

    MaxText's ``layers/embeddings.py`` ``attend_on_embedding`` (the logits of Gemma and other
    ``logits_via_embedding`` models, called from ``layers/nnx_decoders.py``) casts the table
    with ``jnp.asarray(embedding_table, jnp.bfloat16)`` whatever ``dtype`` says: float32
    logits lose precision and the exported Einsum mixes float32 and bfloat16, which ONNX
    Runtime rejects. Same product otherwise; our CPU settings never shard or offload it.
    """
    table = jnp.asarray(embedding_table, config.dtype)
    return jnp.dot(query, table.T, preferred_element_type=attend_dtype)


@patches.replaces(
    "maxtext.layers.moe:RoutedMoE.reshape_and_update_weights",
    "export",
    "its scatter indexed by arange(batch) cannot take a symbolic batch in jax2onnx",
)
def _expert_weights_by_one_hot(self, weights, indices, safe_updates=False):
    """MaxText's ``RoutedMoE.reshape_and_update_weights`` (layers/moe.py) without its scatter.

    It scatters the top-k gate weights into a [batch, sequence, experts] array indexed by
    ``jnp.arange(batch)``, which jax2onnx cannot index with a symbolic batch. The same values
    as a one-hot sum (top-k indices are distinct, so ``set`` and ``add`` agree).
    """
    if safe_updates:  # forced routing: not used for inference here
        original = patches.original_of(_expert_weights_by_one_hot)
        return original(self, weights, indices, safe_updates)
    one_hot = jax.nn.one_hot(indices, self.num_experts, dtype=self.dtype)
    return jnp.einsum("bsk,bske->bse", weights.astype(self.dtype), one_hot)


# Decoder blocks whose layers build MaxText's Attention without its window options.
WINDOW_FROM_CONFIG = ("mistral", "mixtral")


@patches.replaces(
    "maxtext.layers.attentions:Attention.__init__",
    "export",
    "Mistral's and Mixtral's layers never pass the config's sliding window to Attention",
)
def _attention_init_with_configured_window(self, *args, **kwargs):
    """MaxText's ``Attention.__init__``, taking the sliding window from the config where the
    layer does not choose: MaxText's Mistral and Mixtral layers (models/mistral.py,
    mixtral.py) never pass ``attention_type`` or ``sliding_window_size``, so a checkpoint's
    ``sliding_window`` was ignored. With ``attention_type=local_sliding`` and
    ``sliding_window_size`` set (architectures/mistral.py sets them for a config.json window),
    those layers use MaxText's own LOCAL_SLIDING mask, as Gemma 2's local layers do."""
    from maxtext.common.common_types import AttentionType

    config = kwargs.get("config", args[0] if args else None)
    if (
        "attention_type" not in kwargs
        and getattr(config, "attention_type", "global") == AttentionType.LOCAL_SLIDING.value
        and getattr(config, "sliding_window_size", 0) > 0
        and str(getattr(config.decoder_block, "value", config.decoder_block)) in WINDOW_FROM_CONFIG
    ):
        kwargs.update(
            attention_type=AttentionType.LOCAL_SLIDING,
            sliding_window_size=config.sliding_window_size,
        )
    patches.original_of(_attention_init_with_configured_window)(self, *args, **kwargs)


@patches.replaces(
    "maxtext.layers.attention_op:AttentionOp.compute_local_attention",
    "export",
    "its sink column, concatenated on the symbolic key axis, gets a wrong size in jax2onnx",
)
def _local_attention_with_sinks(
    self, attn_weights, value, q_seq_len, model_mode, wv_product_einsum, sinks=None
):
    """MaxText's ``AttentionOp.compute_local_attention`` (layers/attention_op.py) for attention
    sinks (GPT-OSS) without its concatenation.

    It appends the sink logit as one more key column (``jnp.concatenate`` along the symbolic
    key axis) and slices it off again (``[..., :s]``); jax2onnx 0.17.1 gives that
    concatenation the wrong size, and ONNX Runtime fails on the next reshape. The same max
    and sum over ``[logits, sink]``, taken piecewise: in the full-sequence graph (``train``
    mode) and the KV step's (``prefill``, its keys the cache's and the chunk's). Other cases go
    to MaxText's own.
    """
    if sinks is None or model_mode not in ("train", "prefill") or self.reshape_q:
        return patches.original_of(_local_attention_with_sinks)(
            self, attn_weights, value, q_seq_len, model_mode, wv_product_einsum, sinks
        )
    b, n_kv, g, t, s = attn_weights.shape
    logits = jnp.reshape(attn_weights, (b, n_kv * g, t, s))
    sink = sinks.astype(logits.dtype)[jnp.newaxis, :, jnp.newaxis, jnp.newaxis]  # (1, n_q, 1, 1)
    local_max = jnp.maximum(jnp.max(logits, axis=-1, keepdims=True), sink)
    exps = jnp.exp(logits - local_max)
    local_sum = jnp.sum(exps, axis=-1, keepdims=True) + jnp.exp(sink - local_max)
    local_exps = jnp.reshape(exps, (b, n_kv, g, t, s))
    local_max = jnp.transpose(local_max, (0, 2, 1, 3))  # (b, t, n_q, 1)
    local_sum = jnp.transpose(local_sum, (0, 2, 1, 3))
    local_out = self.wv_product(local_exps, value, model_mode, wv_product_einsum)
    return local_out, local_max, local_sum


@patches.replaces(
    "maxtext.layers.attentions:Attention.init_rotary_embedding",
    "export",
    "MaxText fixes Llama 3's RoPE factor at 8: Llama 3.2's 32 is passed to its embedding",
)
def _init_rotary_embedding_with_llama3_factor(self):
    """MaxText's ``Attention.init_rotary_embedding``, giving its ``LLaMARotaryEmbedding`` the
    checkpoint's Llama 3 RoPE factor: MaxText fixes it at Llama 3.1's 8 (Llama 3.2 has 32).
    architectures/llama3.py passes config.json's factor as ``rope_linear_scaling_factor``, a
    setting MaxText reads for its plain RoPE only; 1.0, its default, keeps MaxText's 8."""
    from maxtext.layers.embeddings import LLaMARotaryEmbedding

    embedding = patches.original_of(_init_rotary_embedding_with_llama3_factor)(self)
    factor = float(getattr(self.config, "rope_linear_scaling_factor", 1.0))
    if isinstance(embedding, LLaMARotaryEmbedding) and factor != 1.0:
        embedding.llama3_factor = factor
    return embedding


@patches.replaces(
    "maxtext.layers.embeddings:LLaMARotaryEmbedding._apply_scaling_factor",
    "export",
    "Llama 3's RoPE scaling with the factor the embedding was given (8 otherwise)",
)
def _llama3_scaling_factor(self, freq):
    """``LLaMARotaryEmbedding._apply_scaling_factor`` (layers/embeddings.py) with the factor
    the patch above set (8, MaxText's, otherwise); its other constants are every Llama 3's
    (architectures/llama3.py refuses others)."""
    scale_factor = getattr(self, "llama3_factor", 8.0)
    low_freq_factor, high_freq_factor, old_context_len = 1.0, 4.0, 8192.0
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * jnp.pi / freq

    def bigger_or_equal_wavelen(freq):
        def equal_wavelen(freq):
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            return (1 - smooth) * freq / scale_factor + smooth * freq

        bigger = wavelen > low_freq_wavelen
        return jax.lax.cond(bigger, lambda f: f / scale_factor, equal_wavelen, freq)

    lower = wavelen < high_freq_wavelen
    return jax.lax.cond(lower, lambda f: f, bigger_or_equal_wavelen, freq)


def _yarn_inverse_frequencies(self) -> jax.Array:
    """``YarnRotaryEmbedding.freqs_cis``'s corrected frequencies, before its outer product
    with positions and its ``exp(1j * ...)`` (the same float32 arithmetic)."""
    half_dim = self.embedding_dims // 2
    exponents = 2.0 * jnp.arange(0, half_dim, dtype=jnp.float32) / self.embedding_dims
    freqs = 1.0 / (self.rope_theta**exponents)
    low, high = self._find_correction_range(
        self.beta_fast,
        self.beta_slow,
        self.embedding_dims,
        self.rope_theta,
        self.original_max_position_embeddings,
        self.truncate,
    )
    smooth = 1 - self._linear_ramp_factor(low, high, half_dim)
    return freqs / self.rope_factor * (1 - smooth) + freqs * smooth


@patches.replaces(
    "maxtext.layers.embeddings:YarnRotaryEmbedding.__call__",
    "export",
    "its complex rotation lowers to a Gather on a scalar that ONNX Runtime rejects",
)
def _yarn_in_real_arithmetic(self, inputs, position=None):
    """MaxText's ``YarnRotaryEmbedding.__call__`` (layers/embeddings.py) with cos and sin in
    place of complex numbers.

    It rotates by multiplying with ``exp(1j * angle)`` gathered from a complex table;
    jax2onnx 0.17.1 lowers that complex arithmetic into a Gather on a scalar that ONNX Runtime
    rejects ("data tensor must have rank >= 1": DeepSeek 2/3, Kimi K2, GPT-OSS, OLMo 3). The
    same rotation, ``(a + ib)(cos + i sin)``, in the same layouts (interleaved or
    concatenated input, concatenated output, or pairwise), with the same scaling and cast.
    Angles are ``position * frequency`` as the table's outer product computes them.
    """
    import math

    if len(inputs.shape) != 4:
        raise ValueError("YaRN input must be [batch, sequence, heads, dims]")
    b, s, n, h = inputs.shape
    half_dim = h // 2
    if position is None:
        position = jnp.arange(s, dtype=jnp.int32)[jnp.newaxis, :]
    angles = position.astype(jnp.float32)[..., jnp.newaxis] * _yarn_inverse_frequencies(self)
    cos = jnp.cos(angles)[:, :, jnp.newaxis, :]  # [b, s, 1, half_dim]
    sin = jnp.sin(angles)[:, :, jnp.newaxis, :]
    if self.interleave and self.pairwise:
        pairs = inputs.reshape(b, s, n, half_dim, 2).astype(jnp.float32)
        swapped = jnp.flip(pairs, axis=-1)
        sign = jnp.asarray([-1.0, 1.0], dtype=jnp.float32)
        rotated = pairs * cos[..., jnp.newaxis] + swapped * sin[..., jnp.newaxis] * sign
        output = rotated.reshape(b, s, n, h)
    else:
        if self.interleave:
            pairs = inputs.reshape(b, s, n, half_dim, 2)
            real, imag = pairs[..., 0], pairs[..., 1]
        else:
            real, imag = jnp.split(inputs, 2, axis=-1)
        output = jnp.concatenate([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    if self.attention_scaling and self.rope_factor > 1:
        output = output * (0.1 * math.log(self.rope_factor) + 1.0)
    if self.cast_as_fprop_dtype:
        output = output.astype(self.fprop_dtype)
    return output


def patch_for_export() -> None:
    """Workarounds for MaxText code that ONNX Runtime or jax2onnx cannot take (README: known
    issues), and settings MaxText ignores: the ``export`` group of ``patches``. The JAX side of
    parity runs them too, so transformers checks them."""
    patches.apply("export")


def forward_function(
    config, params: dict[tuple[str, ...], np.ndarray]
) -> Callable[[jax.Array], jax.Array]:
    """``token ids [batch, sequence] -> logits`` with the weights closed over (jax2onnx makes
    them initializers)."""
    apply, param_state = apply_function(config, params)
    return lambda token_ids: apply(param_state, token_ids)


def model_function(
    config, params: dict[tuple[str, ...], np.ndarray]
) -> tuple[Callable[[Any], nnx.Module], Any]:
    """``(merge(param_state) -> MaxText's model, param_state)``: the model as a function of
    its weights, which ``jax.jit`` takes as buffers rather than constants.

    The model is merged with ``copy=True`` inside whatever calls ``merge`` (MaxText's decoder
    updates layer state while it runs, which must happen at the trace's own level). RNG keys
    are closed over as raw data: key arrays cannot become ONNX constants.
    """
    patch_for_export()
    graphdef, param_state, rest = nnx.split(abstract_model(config), weights_filter(), ...)
    dtype = jnp.dtype(config.weight_dtype)
    missing = []
    for path, variable in param_state.flat_state():
        key = tuple(map(str, path))
        if key not in params:
            missing.append("/".join(key))
            continue
        variable.set_value(jnp.asarray(params[key], dtype))
    if missing:
        raise KeyError(f"no staged value for MaxText parameters {missing[:5]}")

    def concrete(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(jax.random.key(0))  # RNG state of a deterministic model
        return jnp.zeros(x.shape, x.dtype)

    rest_flat = [(path, variable) for path, variable in rest.flat_state()]
    keys = {path for path, v in rest_flat if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)}
    for _, variable in rest_flat:
        variable.set_value(concrete(variable.get_value()))

    def merge(weights) -> nnx.Module:
        state = nnx.State.from_flat_path(
            [
                (path, v.replace(jax.random.wrap_key_data(v.get_value())) if path in keys else v)
                for path, v in rest_flat
            ]
        )
        return nnx.merge(graphdef, weights, state, copy=True)

    return merge, param_state


def apply_function(
    config, params: dict[tuple[str, ...], np.ndarray]
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """``(apply(param_state, token ids) -> logits, param_state)``: the full-sequence forward."""
    merge, param_state = model_function(config, params)

    def apply(weights, token_ids: jax.Array) -> jax.Array:
        positions = jax.lax.broadcasted_iota(jnp.int32, token_ids.shape, 1)
        return merge(weights)(
            decoder_input_tokens=token_ids,
            decoder_positions=positions,
            enable_dropout=False,
            model_mode="train",
        )

    return apply, param_state


def config_dir() -> Path:
    from maxtext.utils.globals import MAXTEXT_CONFIGS_DIR

    return Path(MAXTEXT_CONFIGS_DIR)
