"""Mistral: Llama's layers with a sliding attention window, through MaxText's
llama_or_mistral_ckpt converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    SMALL,
    Architecture,
    HfConfig,
    llama_or_mistral_ckpt_refusals,
    refuse_biases,
    refuse_rope,
    sliding_window,
)


def windowed_attention(hf_config: HfConfig) -> dict[str, Any]:
    """MaxText's Mistral and Mixtral layers build global attention; runtime.py has them take
    these settings (MaxText's own LOCAL_SLIDING mask), as Gemma 2's layers do."""
    window = sliding_window(hf_config)
    return {"attention_type": "local_sliding", "sliding_window_size": window} if window else {}


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    return refuse_rope(hf_config, model_name) + refuse_biases(hf_config, model_name)


def mistral_refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    """Mistral's, and its converter's (Mixtral's, to_maxtext, has no such limit)."""
    return refusals(hf_config, model_name) + llama_or_mistral_ckpt_refusals(hf_config, model_name)


MISTRAL = Architecture(
    model_type="mistral",
    transformers_class="MistralForCausalLM",
    config_class="MistralConfig",
    default_model="mistral-7b",
    converter=convert.convert_llama_like,
    genai_type="mistral",
    settings=windowed_attention,
    refusals=mistral_refusals,
    tiny=fixtures.small("mistral-7b", **SMALL, sliding_window=8),  # < parity's long input
    hf_model_types=("mistral",),
)

ENTRIES = (MISTRAL,)
