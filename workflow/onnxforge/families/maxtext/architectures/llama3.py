"""Llama 3.1 (and Llama 3.2, a variant): Llama's layers with Llama 3's scaled RoPE, through
MaxText 0.2.5's general converter (checkpoint_conversion.to_maxtext)."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    SMALL,
    Architecture,
    HfConfig,
    refuse_biases,
    refuse_rope,
    refuse_window,
    rope_parameters,
    rope_type,
)

# Llama 3.1's RoPE scaling as MaxText applies it (layers/embeddings.py LLaMARotaryEmbedding
# ._apply_scaling_factor: constants, not settings).
LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# Llama 2 and 3 share config.json's model_type "llama": the two functions below are both
# architectures' settings and refusals, so a config.json gets the same whichever one the catalog
# names (llama3.3-70b runs on Llama 2's converter with Llama 3's RoPE).


def llama_settings(hf_config: HfConfig) -> dict[str, Any]:
    if rope_type(hf_config) != "llama3":
        return {}
    # MaxText picks Llama 3.1's scaled RoPE by model name (llama3.1-*) or this setting
    # (llama3.3-70b.yml sets neither).
    settings: dict[str, Any] = {"rope_type": "llama3.1"}
    factor = float(rope_parameters(hf_config).get("factor", 8.0))
    if factor != LLAMA3_ROPE_SCALING["factor"]:  # Llama 3.2's 32 (runtime.py takes it)
        settings["rope_linear_scaling_factor"] = factor
    return settings


def llama_refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    reasons = []
    if rope_type(hf_config) == "llama3":
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
    else:
        reasons += refuse_rope(hf_config, model_name)
    return reasons + refuse_window(hf_config, model_name) + refuse_biases(hf_config, model_name)


LLAMA3 = Architecture(
    model_type="llama3.1",
    transformers_class="LlamaForCausalLM",
    config_class="LlamaConfig",
    default_model="llama3.1-8b",
    converter=convert.with_to_maxtext("llama3.1-8b"),
    genai_type="llama",
    settings=llama_settings,
    refusals=llama_refusals,
    tiny=fixtures.small("llama3.1-8b", **SMALL),
    hf_model_types=("llama",),
    hf_rope_types=("llama3",),
    # Llama 3.2 (1B, 3B): the same layers, RoPE factor 32 (runtime.py's patch) and the LM head
    # tied to the embedding, as meta-llama/Llama-3.2-1B's config.json has them
    variants={"llama3.2": fixtures.small("llama3.2-1b", **SMALL)},
)

ENTRIES = (LLAMA3,)
