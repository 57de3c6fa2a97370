"""Gemma (v1): MaxText's convert_gemma_chkpt, which reads Google's Flax layout (convert.py,
gemma_flax.py)."""

from __future__ import annotations

from typing import Any

from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    GEMMA_TIED_HEAD,
    TINY,
    Architecture,
    HfConfig,
    refuse_biases,
    refuse_rope,
    refuse_window,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return dict(GEMMA_TIED_HEAD)  # besides the common ones


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    return (
        refuse_rope(hf_config, model_name)
        + refuse_window(hf_config, model_name)
        + refuse_biases(hf_config, model_name)
    )


GEMMA = Architecture(
    model_type="gemma",
    transformers_class="GemmaForCausalLM",
    config_class="GemmaConfig",
    default_model="gemma-2b",
    converter=convert.convert_gemma,
    genai_type="gemma",
    settings=settings,
    refusals=refusals,
    tiny={**TINY, "num_key_value_heads": 1, "tie_word_embeddings": True},
    hf_model_types=("gemma",),
)

ENTRIES = (GEMMA,)
