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
    refuse_all_but_default_rope_and_global_attention,
)


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return dict(GEMMA_TIED_HEAD)  # besides the common ones


refusals = refuse_all_but_default_rope_and_global_attention


GEMMA = Architecture(
    fixed_norm_epsilon=1e-6,
    always_tied=True,
    activation=("hidden_activation", "gelu_pytorch_tanh"),  # hidden_act where unset
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
