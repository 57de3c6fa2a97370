"""MaxText settings that make its model match a Hugging Face config.json (pure Python), and
the config.json fields MaxText's models cannot honor (refused at stage, never a numbers-only
parity failure)."""

from __future__ import annotations

from typing import Any

# Llama 3.1's RoPE scaling as MaxText applies it (layers/embeddings.py LLaMARotaryEmbedding
# ._apply_scaling_factor: constants, not settings).
LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# DeepSeek's routing as MaxText's deepseek layers do it, by model_type (config.json's names):
# V2 softmax, greedy, unnormalized; V3 sigmoid plus the correction bias within the best groups,
# renormalized (layers/moe.py deepseek_routing, deepseek_scale_weights).
DEEPSEEK = {
    "deepseek_v2": {"topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False},
    "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True},
}


def rope_parameters(hf_config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings wherever config.json keeps them (``rope_scaling`` before transformers 5,
    ``rope_parameters`` since)."""
    return {**(hf_config.get("rope_scaling") or {}), **(hf_config.get("rope_parameters") or {})}


def rope_theta(hf_config: dict[str, Any]) -> float:
    parameters = rope_parameters(hf_config)
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def rope_type(hf_config: dict[str, Any]) -> str:
    parameters = rope_parameters(hf_config)
    return str(parameters.get("rope_type", parameters.get("type", "default")) or "default")


def gemma3_ropes(hf_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gemma 3's two RoPEs, (global layers', local layers'), each with its ``rope_theta``:
    config.json before transformers 5 keeps them as rope_theta + rope_scaling and
    rope_local_base_freq, since then as rope_parameters per layer type."""
    parameters = hf_config.get("rope_parameters") or {}
    if "full_attention" in parameters or "sliding_attention" in parameters:
        full = dict(parameters.get("full_attention") or {})
        local = dict(parameters.get("sliding_attention") or {})
    else:
        full = {**(hf_config.get("rope_scaling") or {})}
        full["rope_theta"] = hf_config.get("rope_theta", 1_000_000.0)
        local = {"rope_type": "default", "rope_theta": hf_config.get("rope_local_base_freq")}
    for rope in (full, local):
        rope["rope_type"] = str(rope.get("rope_type") or rope.get("type") or "default")
    full.setdefault("rope_theta", 1_000_000.0)
    local["rope_theta"] = local.get("rope_theta") or 10_000.0
    return full, local


# MaxText's Gemma 3 layers: five local (sliding-window) layers, then a global one, repeated
# (models/gemma3.py GEMMA3_ATTENTION_PATTERN).
GEMMA3_PATTERN = ("sliding_attention",) * 5 + ("full_attention",)


def sliding_window(hf_config: dict[str, Any]) -> int | None:
    """The attention window config.json sets, or None (Qwen's is off unless
    ``use_sliding_window``)."""
    window = hf_config.get("sliding_window")
    if hf_config.get("use_sliding_window") is False:
        return None
    return int(window) if window else None


def maxtext_overrides(hf_config: dict[str, Any]) -> dict[str, Any]:
    """MaxText settings that make its model match this checkpoint's config.json.

    Published sizes agree with MaxText's own yml; tiny and layer-truncated checkpoints then
    still build the model their weights need.
    """
    heads = hf_config["num_attention_heads"]
    model_type = hf_config.get("model_type")
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
    if hf_config.get("num_local_experts"):  # Mixtral
        overrides.update(
            num_experts=hf_config["num_local_experts"],
            num_experts_per_tok=hf_config["num_experts_per_tok"],
            base_moe_mlp_dim=hf_config["intermediate_size"],
        )
    if model_type == "qwen3_moe":  # every layer MoE: MaxText wants base_mlp_dim = the experts'
        overrides.update(
            # transformers 5 writes num_local_experts; earlier ones num_experts
            num_experts=hf_config.get("num_experts") or hf_config["num_local_experts"],
            num_experts_per_tok=hf_config["num_experts_per_tok"],
            base_moe_mlp_dim=hf_config["moe_intermediate_size"],
            base_mlp_dim=hf_config["moe_intermediate_size"],
            norm_topk_prob=bool(hf_config.get("norm_topk_prob", False)),
        )
    if model_type == "gpt_oss":
        parameters = rope_parameters(hf_config)
        overrides.update(
            sliding_window_size=sliding_window(hf_config) or 128,
            rope_factor=float(parameters.get("factor", 32.0)),
            original_max_position_embeddings=int(
                parameters.get("original_max_position_embeddings", 4096)
            ),
            beta_fast=float(parameters.get("beta_fast", 32.0)),
            beta_slow=float(parameters.get("beta_slow", 1.0)),
            rope_truncate=bool(parameters.get("truncate", False)),
            max_position_embeddings=int(hf_config.get("max_position_embeddings", 131072)),
            mlp_activations_limit=float(hf_config.get("swiglu_limit", 7.0)),
        )
    if model_type in DEEPSEEK:
        overrides.update(
            base_mlp_dim=hf_config["intermediate_size"],
            base_moe_mlp_dim=hf_config["moe_intermediate_size"],
            first_num_dense_layers=hf_config.get("first_k_dense_replace", 0),
            num_experts=hf_config["n_routed_experts"],
            num_experts_per_tok=hf_config["num_experts_per_tok"],
            shared_experts=hf_config.get("n_shared_experts") or 0,
            routed_scaling_factor=float(hf_config.get("routed_scaling_factor", 1.0)),
            q_lora_rank=hf_config.get("q_lora_rank") or 0,
            kv_lora_rank=hf_config["kv_lora_rank"],
            qk_nope_head_dim=hf_config["qk_nope_head_dim"],
            qk_rope_head_dim=hf_config["qk_rope_head_dim"],
            v_head_dim=hf_config["v_head_dim"],
            rope_type=rope_type(hf_config),
        )
        if model_type == "deepseek_v3":  # the groups its routing searches
            overrides.update(
                n_routing_groups=hf_config.get("n_group") or -1,
                topk_routing_group=hf_config.get("topk_group") or -1,
            )
        if rope_type(hf_config) == "yarn":
            parameters = rope_parameters(hf_config)
            overrides.update(
                rope_factor=float(parameters["factor"]),
                original_max_position_embeddings=int(
                    parameters.get("original_max_position_embeddings", 4096)
                ),
                beta_fast=float(parameters.get("beta_fast", 32.0)),
                beta_slow=float(parameters.get("beta_slow", 1.0)),
                mscale=float(parameters.get("mscale_all_dim") or 1.0),
                max_position_embeddings=int(hf_config.get("max_position_embeddings", 163840)),
            )
    if rope_type(hf_config) == "llama3":
        # MaxText picks Llama 3.1's scaled RoPE by model name (llama3.1-*) or this setting
        # (llama3.3-70b.yml sets neither).
        overrides["rope_type"] = "llama3.1"
        factor = float(rope_parameters(hf_config).get("factor", 8.0))
        if factor != LLAMA3_ROPE_SCALING["factor"]:  # Llama 3.2's 32 (runtime.py takes it)
            overrides["rope_linear_scaling_factor"] = factor
    window = sliding_window(hf_config)
    if model_type in ("mistral", "mixtral") and window:
        # MaxText's Mistral and Mixtral layers build global attention; runtime.py has them
        # take these settings (MaxText's own LOCAL_SLIDING mask), as Gemma 2's layers do.
        overrides.update(attention_type="local_sliding", sliding_window_size=window)
    if model_type == "gemma2":
        # One MaxText gemma2 layer is a (local, global) pair of Hugging Face layers.
        overrides["base_num_decoder_layers"] = hf_config["num_hidden_layers"] // 2
        overrides["sliding_window_size"] = window or 4096
        overrides["final_logits_soft_cap"] = float(hf_config.get("final_logit_softcapping") or 0)
        overrides["attn_logits_soft_cap"] = float(hf_config.get("attn_logit_softcapping") or 0)
    if model_type == "gemma3_text":
        full, local = gemma3_ropes(hf_config)
        overrides.update(
            sliding_window_size=window or 4096,
            rope_max_timescale=float(full["rope_theta"]),
            local_rope_max_timescale=float(local["rope_theta"]),
            # MaxText scales the global layers' RoPE linearly; never the local layers'.
            rope_linear_scaling_factor=float(full.get("factor", 1.0))
            if full["rope_type"] == "linear"
            else 1.0,
            final_logits_soft_cap=float(hf_config.get("final_logit_softcapping") or 0),
            attn_logits_soft_cap=float(hf_config.get("attn_logit_softcapping") or 0),
        )
    return overrides


def unsupported(hf_config: dict[str, Any], model_name: str) -> list[str]:
    """The config.json fields MaxText's ``model_name`` cannot honor, each with why."""
    model_type = hf_config.get("model_type")
    reasons = []
    kind = rope_type(hf_config)
    if kind == "llama3":
        parameters = rope_parameters(hf_config)
        differs = {
            key: parameters.get(key)
            for key, value in LLAMA3_ROPE_SCALING.items()
            if key not in ("rope_type", "factor") and float(parameters.get(key, -1)) != value
        }
        if differs:
            reasons.append(
                f"rope_scaling {differs}: MaxText applies Llama 3's RoPE scaling with fixed "
                f"constants {LLAMA3_ROPE_SCALING} (the factor aside, which runtime.py takes "
                "from the config)"
            )
    elif model_type == "gemma3_text":
        full, local = gemma3_ropes(hf_config)
        if full["rope_type"] not in ("default", "linear") or local["rope_type"] != "default":
            reasons.append(
                f"rope_parameters (global {full['rope_type']!r}, local {local['rope_type']!r}): "
                f"MaxText's {model_name} scales only the global layers' RoPE, linearly"
            )
    elif model_type in DEEPSEEK and kind != "yarn":
        # Its MLA scales attention by YaRN's mscale whatever the RoPE (attention_mla.py).
        reasons.append(f"rope_scaling type {kind!r}: MaxText's {model_name} has YaRN only")
    elif kind != "default" and not (kind == "yarn" and model_type in ("gpt_oss", *DEEPSEEK)):
        reasons.append(f"rope_scaling type {kind!r}: MaxText's {model_name} has no such RoPE")
    if sliding_window(hf_config) and model_type not in (
        "mistral",
        "mixtral",
        "gemma2",
        "gemma3_text",
        "gpt_oss",
    ):
        reasons.append(
            f"sliding_window {sliding_window(hf_config)}: MaxText's {model_name} attends "
            "globally in every layer"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag) and model_type != "gpt_oss":
            reasons.append(f"{flag}: MaxText's {model_name} has no such biases")
    if model_type == "qwen3_moe" and (
        hf_config.get("mlp_only_layers") or hf_config.get("decoder_sparse_step", 1) != 1
    ):
        reasons.append(
            "mlp_only_layers / decoder_sparse_step: MaxText's qwen3_moe makes every layer MoE"
        )
    layer_types = hf_config.get("layer_types")
    if model_type == "gpt_oss" and layer_types:
        alternating = ["sliding_attention", "full_attention"] * len(layer_types)
        if list(layer_types) != alternating[: len(layer_types)]:
            reasons.append(
                "layer_types: MaxText's GPT-OSS alternates sliding and full attention, "
                "starting with sliding"
            )
    if model_type in DEEPSEEK:
        routing = DEEPSEEK[model_type]
        for key, expected in routing.items():
            if hf_config.get(key, expected) != expected:
                reasons.append(
                    f"{key} {hf_config[key]!r}: MaxText's {model_name} routes with "
                    f"{key} {expected!r}"
                )
    if model_type == "gemma2" and hf_config["num_hidden_layers"] % 2:
        reasons.append(
            f"num_hidden_layers {hf_config['num_hidden_layers']}: MaxText's gemma2 layers "
            "are (local, global) pairs; stage an even number of layers"
        )
    if model_type == "gemma3_text":
        pattern = [GEMMA3_PATTERN[i % len(GEMMA3_PATTERN)] for i in range(len(layer_types or []))]
        if layer_types and list(layer_types) != pattern:
            reasons.append(
                "layer_types: MaxText's Gemma 3 has five sliding-window layers, then a global "
                "one, repeated"
            )
        if hf_config.get("sliding_window_pattern", len(GEMMA3_PATTERN)) != len(GEMMA3_PATTERN):
            reasons.append(
                f"sliding_window_pattern {hf_config['sliding_window_pattern']}: MaxText's "
                f"Gemma 3 has a global layer every {len(GEMMA3_PATTERN)}"
            )
        if hf_config.get("use_bidirectional_attention"):
            reasons.append(f"use_bidirectional_attention: MaxText's {model_name} attends causally")
    if model_type in ("gemma2", "gemma3_text"):
        # MaxText's gemma3-27b scales queries by (emb_dim / heads) ** -0.5, every other Gemma
        # 2 or 3 by head_dim ** -0.5 (models/gemma3.py get_query_pre_attn_scalar).
        scalar, named = hf_config.get("head_dim"), "head_dim"
        if model_name == "gemma3-27b":
            scalar = hf_config["hidden_size"] // hf_config["num_attention_heads"]
            named = "hidden_size / num_attention_heads"
        if hf_config.get("query_pre_attn_scalar", scalar) != scalar:
            reasons.append(
                f"query_pre_attn_scalar {hf_config['query_pre_attn_scalar']}: MaxText's "
                f"{model_name} scales queries by {named} ({scalar}) ** -0.5"
            )
    return reasons
