"""GPT-OSS's per-layer taps for the diagnosis: our NNX model's own blocks, run one by one.

Names are ``families.taps``': per layer the attention block's output (before the residual
add), the MoE block's output, the layer's output, the router's logits and the chosen experts;
then the final norm's output and the LM head's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from onnxforge.families import taps as tap_names
from onnxforge.families.gpt_oss.model import GptOss


def forward_with_taps(model: GptOss, token_ids: jax.Array) -> tuple[jax.Array, dict]:
    """``model(token_ids)``'s logits, and its taps, from the same blocks in the same order."""
    cos, sin = model._rotary_tables(token_ids.shape[1])
    x = jnp.take(model.embedding[...], token_ids.astype(jnp.int32), axis=0)
    taps = {}
    for i, layer in enumerate(model.layers):
        attention = layer.attention(layer.input_norm(x), cos, sin)
        x = x + attention
        normed = layer.post_attention_norm(x)
        mlp = layer.mlp(normed)
        x = x + mlp
        taps[tap_names.tap(i, "attention")] = attention
        taps[tap_names.tap(i, "mlp")] = mlp
        taps[tap_names.tap(i, "output")] = x
        taps[tap_names.tap(i, "router_logits")] = layer.mlp.router_logits(normed)
        taps[tap_names.tap(i, "experts")] = layer.mlp.routing(normed)[1]
    normed = model.norm(x)
    logits = normed @ model.lm_head[...]
    taps[tap_names.final_tap("norm")] = normed
    taps[tap_names.final_tap("lm_head")] = logits
    return logits, taps
