"""Mixtral: Mistral's layers with a mixture of experts, through MaxText's to_maxtext
converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    SMALL,
    Architecture,
    HfConfig,
    local_experts,
)
from onnxforge.families.maxtext.architectures.mistral import refusals, windowed_attention


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return {**local_experts(hf_config), **windowed_attention(hf_config)}


MIXTRAL = Architecture(
    quantized=True,
    model_type="mixtral",
    transformers_class="MixtralForCausalLM",
    config_class="MixtralConfig",
    default_model="mixtral-8x7b",
    # llama_or_mistral_ckpt's safetensors path cannot read experts (it maps every tensor with
    # expert index -1); to_maxtext's Mixtral mapping can.
    converter=convert.with_to_maxtext("mixtral-8x7b"),
    genai_type="mistral",  # GenAI runs Mixtral's graph with its Mistral driver
    settings=settings,
    refusals=refusals,  # Mistral's
    tiny=fixtures.small("mixtral-8x7b", **{**SMALL, "intermediate_size": 64}, num_local_experts=4),
    hf_model_types=("mixtral",),
)

ENTRIES = (MIXTRAL,)
