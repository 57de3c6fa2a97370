"""GPT-OSS through MaxText's GPT-OSS (a second implementation of the gpt_oss family's model):
alternating sliding and full attention with sinks, YaRN, clamped SwiGLU experts, biases."""

from __future__ import annotations

from typing import Any

from onnxforge.families.gpt_oss.synthetic import TINY as GPT_OSS_TINY
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    Architecture,
    HfConfig,
    local_experts,
    refuse_rope,
    rope_parameters,
    sliding_window,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    parameters = rope_parameters(hf_config)
    return {
        **local_experts(hf_config),
        "sliding_window_size": sliding_window(hf_config) or 128,
        "rope_factor": float(parameters.get("factor", 32.0)),
        "original_max_position_embeddings": int(
            parameters.get("original_max_position_embeddings", 4096)
        ),
        "beta_fast": float(parameters.get("beta_fast", 32.0)),
        "beta_slow": float(parameters.get("beta_slow", 1.0)),
        "rope_truncate": bool(parameters.get("truncate", False)),
        "max_position_embeddings": int(hf_config.get("max_position_embeddings", 131072)),
        "mlp_activations_limit": float(hf_config.get("swiglu_limit", 7.0)),
    }


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    # Its attention and MLP have biases, and its window is MaxText's: neither is refused.
    reasons = refuse_rope(hf_config, model_name, honored=("default", "yarn"))
    layer_types = hf_config.get("layer_types")
    if layer_types:
        alternating = ["sliding_attention", "full_attention"] * len(layer_types)
        if list(layer_types) != alternating[: len(layer_types)]:
            reasons.append(
                "layer_types: MaxText's GPT-OSS alternates sliding and full attention, "
                "starting with sliding"
            )
    limit = hf_config.get("swiglu_limit", REFERENCE_SWIGLU_LIMIT)
    if limit != REFERENCE_SWIGLU_LIMIT:  # MaxText would honour it; nothing could check it
        reasons.append(
            f"swiglu_limit {limit}: the maxtext environment's transformers (the reference) "
            f"clamps at {REFERENCE_SWIGLU_LIMIT} whatever the config says; build it with the "
            "gpt_oss family (--family gpt_oss), whose reference reads it"
        )
    return reasons


# transformers 5.17 (envs/maxtext.lock.txt) hard-codes GptOssExperts.limit = 7.0; 5.23 reads
# config.swiglu_limit (found by tests/support/mutations.py).
REFERENCE_SWIGLU_LIMIT = 7.0


# The gpt_oss family's own tiny checkpoint (synthetic.py delegates to its writer: the same bytes
# as tiny-gpt-oss). `onnxforge build` gives gpt_oss configs to the gpt_oss family (registry
# order); --family maxtext picks this one.
GPT_OSS = Architecture(
    activation=None,  # its clamped SwiGLU, whatever hidden_act says
    model_type="gpt_oss",
    transformers_class="GptOssForCausalLM",
    config_class="GptOssConfig",
    default_model="gpt-oss-20b",
    converter=convert.with_to_maxtext("gpt-oss-20b"),
    genai_type="gptoss",
    settings=settings,
    refusals=refusals,
    tiny=GPT_OSS_TINY,
    hf_model_types=("gpt_oss",),
    hf_rope_types=("yarn",),
    same_checkpoint_as="tiny-gpt-oss",
)

ENTRIES = (GPT_OSS,)
