"""OpenAI's ``original/`` GPT-OSS layout -> our parameter paths, and its config.json.

OpenAI's checkpoint fuses q, k and v into ``attn.qkv``, calls the router ``mlp.gate`` and
ships expert weights as MXFP4 (``mlp1_weight.blocks``/``.scales``, gate and up interleaved
like the Hugging Face layout). Names follow ``gpt_oss/torch/model.py`` in openai/gpt-oss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxforge.families.gpt_oss.config import GptOssConfig
from onnxforge.families.gpt_oss.hf_checkpoint import (
    EVEN,
    ODD,
    TensorRule,
    Transform,
    even_columns,
    mxfp4_packed,
    odd_columns,
    same,
    transpose,
)

MARKER = "block.0.attn.qkv.weight"


def is_openai_config(raw: dict[str, Any]) -> bool:
    return "num_experts" in raw and "model_type" not in raw


def hf_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face config.json for either layout's config."""
    return to_hf_config(raw) if is_openai_config(raw) else raw


def to_hf_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face GptOss config.json that describes the same model."""
    layers = int(raw["num_hidden_layers"])
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "vocab_size": raw["vocab_size"],
        "hidden_size": raw["hidden_size"],
        "intermediate_size": raw["intermediate_size"],
        "num_hidden_layers": layers,
        "num_attention_heads": raw["num_attention_heads"],
        "num_key_value_heads": raw["num_key_value_heads"],
        "head_dim": raw["head_dim"],
        "num_local_experts": raw["num_experts"],
        "num_experts_per_tok": raw["experts_per_token"],
        "sliding_window": raw["sliding_window"],
        # OpenAI's reference slides the window on even layers.
        "layer_types": [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)
        ],
        "swiglu_limit": raw.get("swiglu_limit", 7.0),
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": raw["rope_theta"],
            "factor": raw["rope_scaling_factor"],
            "beta_fast": raw["rope_ntk_beta"],
            "beta_slow": raw["rope_ntk_alpha"],
            "original_max_position_embeddings": raw["initial_context_length"],
            "truncate": False,
        },
    }


def _rows(start: int, stop: int, then: Transform) -> Transform:
    return lambda x: then(np.ascontiguousarray(x[start:stop]))


def tensor_rules(cfg: GptOssConfig) -> list[TensorRule]:
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    rules = [
        TensorRule.one("embedding.weight", {("embedding",): same}),
        TensorRule.one("norm.scale", {("norm", "scale"): same}),
        TensorRule.one("unembedding.weight", {("lm_head",): transpose}),
    ]
    for i in range(cfg.num_hidden_layers):
        block, ours = f"block.{i}", ("layers", str(i))
        attn, mlp = (*ours, "attention"), (*ours, "mlp")
        splits = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}

        rules += [
            TensorRule.one(f"{block}.attn.norm.scale", {(*ours, "input_norm", "scale"): same}),
            TensorRule.one(
                f"{block}.attn.qkv.weight",
                {(*attn, f"{n}_kernel"): _rows(a, b, transpose) for n, (a, b) in splits.items()},
            ),
            TensorRule.one(
                f"{block}.attn.qkv.bias",
                {(*attn, f"{n}_bias"): _rows(a, b, same) for n, (a, b) in splits.items()},
            ),
            TensorRule.one(f"{block}.attn.sinks", {(*attn, "sinks"): same}),
            TensorRule.one(f"{block}.attn.out.weight", {(*attn, "o_kernel"): transpose}),
            TensorRule.one(f"{block}.attn.out.bias", {(*attn, "o_bias"): same}),
            TensorRule.one(
                f"{block}.mlp.norm.scale", {(*ours, "post_attention_norm", "scale"): same}
            ),
            TensorRule.one(f"{block}.mlp.gate.weight", {(*mlp, "router_kernel"): transpose}),
            TensorRule.one(f"{block}.mlp.gate.bias", {(*mlp, "router_bias"): same}),
            TensorRule(
                (f"{block}.mlp.mlp1_weight.blocks", f"{block}.mlp.mlp1_weight.scales"),
                {
                    **mxfp4_packed((*mlp, "gate_kernel"), EVEN),
                    **mxfp4_packed((*mlp, "up_kernel"), ODD),
                },
            ),
            TensorRule.one(
                f"{block}.mlp.mlp1_bias",
                {(*mlp, "gate_bias"): even_columns, (*mlp, "up_bias"): odd_columns},
            ),
            TensorRule(
                (f"{block}.mlp.mlp2_weight.blocks", f"{block}.mlp.mlp2_weight.scales"),
                mxfp4_packed((*mlp, "down_kernel")),
            ),
            TensorRule.one(f"{block}.mlp.mlp2_bias", {(*mlp, "down_bias"): same}),
        ]
    return rules
