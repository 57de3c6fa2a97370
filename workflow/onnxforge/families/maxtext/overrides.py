"""MaxText settings that make its model match a Hugging Face config.json (pure Python)."""

from __future__ import annotations

from typing import Any


def rope_theta(hf_config: dict[str, Any]) -> float:
    parameters = hf_config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def maxtext_overrides(hf_config: dict[str, Any]) -> dict[str, Any]:
    """MaxText settings that make its model match this checkpoint's config.json.

    Published sizes agree with MaxText's own yml; tiny and layer-truncated checkpoints then
    still build the model their weights need.
    """
    heads = hf_config["num_attention_heads"]
    overrides = {
        "base_emb_dim": hf_config["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf_config.get("num_key_value_heads", heads),
        "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        "base_mlp_dim": hf_config["intermediate_size"],
        "base_num_decoder_layers": hf_config["num_hidden_layers"],
        "vocab_size": hf_config["vocab_size"],
        "normalization_layer_epsilon": hf_config.get("rms_norm_eps", 1e-6),
        "rope_max_timescale": rope_theta(hf_config),
        "logits_via_embedding": bool(hf_config.get("tie_word_embeddings", False)),
    }
    if hf_config.get("num_local_experts"):
        overrides.update(
            num_experts=hf_config["num_local_experts"],
            num_experts_per_tok=hf_config["num_experts_per_tok"],
            base_moe_mlp_dim=hf_config["intermediate_size"],
        )
    return overrides
