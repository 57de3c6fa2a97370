"""Qwen 3 (dense): Llama-like layers with query/key norms, through MaxText's to_maxtext
converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    SMALL,
    Architecture,
    HfConfig,
    refuse_all_but_default_rope_and_global_attention,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return {}  # the common ones are all


refusals = refuse_all_but_default_rope_and_global_attention


QWEN3 = Architecture(
    model_type="qwen3",
    transformers_class="Qwen3ForCausalLM",
    config_class="Qwen3Config",
    default_model="qwen3-8b",
    converter=convert.with_to_maxtext("qwen3-8b"),
    genai_type="qwen3",
    settings=settings,
    refusals=refusals,
    tiny=fixtures.small("qwen3-8b", **SMALL),
    hf_model_types=("qwen3",),
)

ENTRIES = (QWEN3,)
