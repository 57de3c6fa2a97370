"""Qwen 3 MoE: Qwen 3's attention, every layer a mixture of experts, through MaxText's
to_maxtext converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    APART_HEAD_DIM,
    GENAI_DECODER_ONLY,
    SMALL,
    Architecture,
    HfConfig,
    refuse_all_but_default_rope_and_global_attention,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    # Every layer MoE: MaxText wants base_mlp_dim = the experts'.
    return {
        # transformers 5 writes num_local_experts; earlier ones num_experts
        "num_experts": hf_config.get("num_experts") or hf_config["num_local_experts"],
        "num_experts_per_tok": hf_config["num_experts_per_tok"],
        "base_moe_mlp_dim": hf_config["moe_intermediate_size"],
        "base_mlp_dim": hf_config["moe_intermediate_size"],
        "norm_topk_prob": True,  # MaxText renormalizes either way (refusals)
    }


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    reasons = refuse_all_but_default_rope_and_global_attention(hf_config, model_name)
    if hf_config.get("mlp_only_layers") or hf_config.get("decoder_sparse_step", 1) != 1:
        reasons.append(
            "mlp_only_layers / decoder_sparse_step: MaxText's qwen3_moe makes every layer MoE"
        )
    if not hf_config.get("norm_topk_prob", False):  # transformers' default: off
        reasons.append(
            f"norm_topk_prob false: MaxText's {model_name} weighs the top-k experts by a "
            "softmax over their router logits (renormalized), whatever norm_topk_prob says"
        )
    return reasons


QWEN3_MOE = Architecture(
    model_type="qwen3_moe",
    transformers_class="Qwen3MoeForCausalLM",
    config_class="Qwen3MoeConfig",
    default_model="qwen3-30b-a3b",
    converter=convert.with_to_maxtext("qwen3-30b-a3b"),
    genai_type=GENAI_DECODER_ONLY,
    settings=settings,
    refusals=refusals,
    # 30B-A3B's top-8 routing, among 16 experts rather than 128
    tiny=fixtures.small(
        "qwen3-30b-a3b",
        **SMALL | {"head_dim": APART_HEAD_DIM},
        moe_intermediate_size=32,
        num_experts=16,
    ),
    hf_model_types=("qwen3_moe",),
)

ENTRIES = (QWEN3_MOE,)
