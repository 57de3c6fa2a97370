"""Qwen 3 (dense): Llama-like layers with query/key norms, through MaxText's to_maxtext
converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    TINY,
    Architecture,
    HfConfig,
    refuse_biases,
    refuse_rope,
    refuse_window,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return {}  # the common ones are all


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    return (
        refuse_rope(hf_config, model_name)
        + refuse_window(hf_config, model_name)
        + refuse_biases(hf_config, model_name)
    )


QWEN3 = Architecture(
    model_type="qwen3",
    transformers_class="Qwen3ForCausalLM",
    config_class="Qwen3Config",
    default_model="qwen3-8b",
    converter=convert.with_to_maxtext("qwen3-8b"),
    genai_type="qwen3",
    settings=settings,
    refusals=refusals,
    tiny={**TINY, "rope_theta": 1000000.0},
    hf_model_types=("qwen3",),
)

ENTRIES = (QWEN3,)
