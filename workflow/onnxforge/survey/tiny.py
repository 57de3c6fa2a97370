"""A MaxText config at a tiny size: the overrides that shrink it, and its random weights."""

from __future__ import annotations

import math
from typing import Any

from onnxforge.families.synthetic import is_norm_scale
from onnxforge.survey.settings import SEED

# Tiny dimensions for every config; the per-config adjustments are in ``tiny_overrides``.
TINY: dict[str, Any] = {
    "base_emb_dim": 64,
    "base_num_query_heads": 4,
    "base_num_kv_heads": 4,
    "head_dim": 16,
    "base_mlp_dim": 128,
    "base_moe_mlp_dim": 64,
    "base_num_decoder_layers": 2,
    "vocab_size": 256,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "kv_lora_rank": 8,
    "q_lora_rank": 0,
    "use_qwix_quantization": False,
    "grad_dtype": "float32",
    "max_target_length": 64,
    "max_prefill_predict_length": 64,
}

# Size fields some configs set: shrunk only where the config sets them.
SHRINK: dict[str, int] = {
    "global_head_dim": 32,
    "global_num_kv_heads": 2,
    "gdn_key_head_dim": 16,
    "gdn_value_head_dim": 16,
    "gdn_num_key_heads": 2,
    "gdn_num_value_heads": 4,
    "gdn_chunk_size": 8,
    "indexer_n_heads": 2,
    "indexer_head_dim": 16,
    "indexer_topk": 8,
    "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": 256,
    "o_lora_rank": 8,
    "sliding_window_size": 8,
    "chunk_attn_window_size": 8,
    "attention_output_dim": 64,
    "moe_expert_input_dim": 64,
}


def tiny_overrides(model_yaml: dict[str, Any], base_keys: set[str]) -> dict[str, Any]:
    """The overrides that make one config tiny (only keys MaxText's base.yml knows)."""
    out = dict(TINY)
    kv = model_yaml.get("base_num_kv_heads", 4)
    q = model_yaml.get("base_num_query_heads", 4)
    if isinstance(kv, int) and isinstance(q, int) and kv < q:
        out["base_num_kv_heads"] = 2  # keep grouped-query attention grouped
    if int(model_yaml.get("q_lora_rank", 0) or 0) > 0:
        out["q_lora_rank"] = 8
    experts = int(model_yaml.get("num_experts", 1) or 1)
    if experts > 1:
        out["num_experts"] = min(experts, 4)
        per_token = int(model_yaml.get("num_experts_per_tok", 1) or 1)
        out["num_experts_per_tok"] = max(1, min(per_token, 2, out["num_experts"]))
        groups = int(model_yaml.get("n_routing_groups", -1) or -1)
        if groups > 1:
            out["n_routing_groups"] = 2
            out["topk_routing_group"] = 1
    for key, small in SHRINK.items():
        value = model_yaml.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = min(value, small)
    # Layers: a whole number of the config's layer cycle after its dense prefix.
    dense = min(int(model_yaml.get("first_num_dense_layers", 0) or 0), 1)
    if "first_num_dense_layers" in model_yaml:
        out["first_num_dense_layers"] = dense
    cycle = 1
    for key in ("inhomogeneous_layer_cycle_interval", "interleave_moe_layer_step"):
        value = model_yaml.get(key)
        if isinstance(value, int) and value > 1:
            cycle = math.lcm(cycle, value)
    value = model_yaml.get("nope_layer_interval")
    if isinstance(value, int) and value > 1:
        cycle = math.lcm(cycle, value)
    prefix = max(dense, int(model_yaml.get("first_num_hash_layers", 0) or 0))
    out["base_num_decoder_layers"] = prefix + cycle * max(1, math.ceil(2 / cycle))
    fully_moe = (
        experts > 1
        and cycle == 1
        and int(model_yaml.get("first_num_dense_layers", 0) or 0) == 0
        and model_yaml.get("decoder_block") != "gemma4"
    )
    if fully_moe:
        out["base_mlp_dim"] = out["base_moe_mlp_dim"]  # MaxText requires it of a fully MoE model
    section = model_yaml.get("mrope_section", [24, 20, 20] if model_yaml.get("use_mrope") else None)
    if isinstance(section, list) and section and sum(section) > 0:
        # Multimodal RoPE: the sections split head_dim / 2 frequencies, in the config's ratios.
        factor = float(model_yaml.get("partial_rotary_factor", 1.0) or 1.0)
        while int(out["head_dim"] * factor) // 2 < len(section):
            out["head_dim"] *= 2  # room for one frequency per section
        half = int(out["head_dim"] * factor) // 2
        scaled = [max(1, round(part * half / sum(section))) for part in section]
        scaled[0] += half - sum(scaled)
        out["mrope_section"] = "[" + ",".join(map(str, scaled)) + "]"
    shared = model_yaml.get("num_kv_shared_layers")
    if isinstance(shared, int) and shared > 0:
        out["num_kv_shared_layers"] = min(shared, out["base_num_decoder_layers"] // 2)
    return {k: v for k, v in out.items() if k in base_keys}


def random_params(shapes: dict[tuple[str, ...], tuple[int, ...]], seed: int = SEED):
    """Seeded random weights: normal * 0.05, norm scales ones + noise (zeros hide errors)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in sorted(shapes.items()):
        noise = rng.standard_normal(shape).astype(np.float32) * 0.05
        params[path] = (1.0 + noise) if is_norm_scale(path) else noise
    return params
