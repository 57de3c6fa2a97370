"""DeepSeek V2 and V3: multi-head latent attention (MLA) and a mixture of experts with shared
experts, YaRN RoPE; through MaxText's to_maxtext converter. V3 is V2's layers with query LoRA
and group-limited sigmoid routing with a correction bias."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    GENAI_DECODER_ONLY,
    SMALL,
    Architecture,
    HfConfig,
    refuse_biases,
    refuse_window,
    rope_parameters,
    rope_type,
)

# DeepSeek's routing as MaxText's deepseek layers do it (config.json's names): V2 softmax,
# greedy, unnormalized; V3 sigmoid plus the correction bias within the best groups,
# renormalized (layers/moe.py deepseek_routing, deepseek_scale_weights).
V2_ROUTING = {"topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False}
V3_ROUTING = {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True}


def mla_and_experts(hf_config: HfConfig) -> dict[str, Any]:
    return {
        "base_mlp_dim": hf_config["intermediate_size"],
        "base_moe_mlp_dim": hf_config["moe_intermediate_size"],
        "first_num_dense_layers": hf_config.get("first_k_dense_replace", 0),
        "num_experts": hf_config["n_routed_experts"],
        "num_experts_per_tok": hf_config["num_experts_per_tok"],
        "shared_experts": hf_config.get("n_shared_experts") or 0,
        "routed_scaling_factor": float(hf_config.get("routed_scaling_factor", 1.0)),
        "q_lora_rank": hf_config.get("q_lora_rank") or 0,
        "kv_lora_rank": hf_config["kv_lora_rank"],
        "qk_nope_head_dim": hf_config["qk_nope_head_dim"],
        "qk_rope_head_dim": hf_config["qk_rope_head_dim"],
        "v_head_dim": hf_config["v_head_dim"],
        "rope_type": rope_type(hf_config),
    }


def yarn(hf_config: HfConfig) -> dict[str, Any]:
    if rope_type(hf_config) != "yarn":
        return {}  # refused
    parameters = rope_parameters(hf_config)
    return {
        "rope_factor": float(parameters["factor"]),
        "original_max_position_embeddings": int(
            parameters.get("original_max_position_embeddings", 4096)
        ),
        "beta_fast": float(parameters.get("beta_fast", 32.0)),
        "beta_slow": float(parameters.get("beta_slow", 1.0)),
        "mscale": float(parameters.get("mscale_all_dim") or 1.0),
        "max_position_embeddings": int(hf_config.get("max_position_embeddings", 163840)),
    }


def v2_settings(hf_config: HfConfig) -> dict[str, Any]:
    return {**mla_and_experts(hf_config), **yarn(hf_config)}


def v3_settings(hf_config: HfConfig) -> dict[str, Any]:
    groups = {  # the groups its routing searches
        "n_routing_groups": hf_config.get("n_group") or -1,
        "topk_routing_group": hf_config.get("topk_group") or -1,
    }
    return {**mla_and_experts(hf_config), **groups, **yarn(hf_config)}


def refusals(hf_config: HfConfig, model_name: str, routing: dict[str, Any]) -> list[str]:
    reasons = []
    kind = rope_type(hf_config)
    if kind != "yarn":
        # Its MLA scales attention by YaRN's mscale whatever the RoPE (attention_mla.py).
        reasons.append(f"rope_scaling type {kind!r}: MaxText's {model_name} has YaRN only")
    reasons += refuse_window(hf_config, model_name) + refuse_biases(hf_config, model_name)
    for key, expected in routing.items():
        if hf_config.get(key, expected) != expected:
            reasons.append(
                f"{key} {hf_config[key]!r}: MaxText's {model_name} routes with {key} {expected!r}"
            )
    return reasons


def v2_refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    return refusals(hf_config, model_name, V2_ROUTING)


def v3_refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    return refusals(hf_config, model_name, V3_ROUTING)


# DeepSeek-V2-Lite's shape at a tiny size: no query LoRA, one dense layer first, MLA, MoE with a
# shared expert, and its YaRN (MaxText's deepseek2-16b.yml: the same numbers).
MLA_SIZES = {
    **SMALL,
    "num_key_value_heads": 4,  # = num_attention_heads, as published
    "head_dim": 8,  # = qk_rope_head_dim, as transformers has it
    "moe_intermediate_size": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
}
# DeepSeek-V2-Lite (no query LoRA, one dense layer first, 2 shared experts, top-6 softmax
# routing, its YaRN) with 16 routed experts rather than 64.
V2_TINY = fixtures.small("deepseek2-16b", **MLA_SIZES, n_routed_experts=16)

# DeepSeek V3's routing at a tiny size: query LoRA, sigmoid scores plus the correction bias
# (noaux_tc), the best of 2 expert groups searched, renormalized top-2 scaled by 2.5; and its
# YaRN (MaxText's deepseek3-671b.yml: mscale 1).
V3_TINY = fixtures.small(
    "deepseek3-671b",
    **MLA_SIZES,
    q_lora_rank=16,
    n_routed_experts=32,  # 8 groups of 4 (256 published: of 32), the best 4 groups searched
    first_k_dense_replace=1,  # one dense layer, then one MoE (3 of 61 published)
)

# V2-Lite's shape: no query LoRA, one dense layer first.
DEEPSEEK_V2 = Architecture(
    model_type="deepseek_v2",
    transformers_class="DeepseekV2ForCausalLM",
    config_class="DeepseekV2Config",
    default_model="deepseek2-16b",
    converter=convert.with_to_maxtext("deepseek2-16b"),
    genai_type=GENAI_DECODER_ONLY,
    settings=v2_settings,
    refusals=v2_refusals,
    tiny=V2_TINY,
    hf_model_types=("deepseek_v2",),
    hf_rope_types=("yarn",),
    router_scores="softmax",
)

# convert.py stages the routing bias MaxText's mapping misnames.
DEEPSEEK_V3 = Architecture(
    model_type="deepseek_v3",
    transformers_class="DeepseekV3ForCausalLM",
    config_class="DeepseekV3Config",
    default_model="deepseek3-671b",
    converter=convert.with_to_maxtext("deepseek3-671b"),
    genai_type=GENAI_DECODER_ONLY,
    settings=v3_settings,
    refusals=v3_refusals,
    tiny=V3_TINY,
    hf_model_types=("deepseek_v3",),
    hf_rope_types=("yarn",),
    router_scores="sigmoid",
)

ENTRIES = (DEEPSEEK_V2, DEEPSEEK_V3)
