"""Gemma (v1): MaxText's convert_gemma_chkpt, which reads Google's Flax layout (convert.py,
gemma_flax.py)."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    GEMMA_TIED_HEAD,
    SMALL,
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
    # transformers' Gemma (unlike Gemma 2 and 3) reads hidden_act, and its "gelu" (what the
    # published config.json says) as the tanh approximation (GemmaConfig.__post_init__).
    activation=("hidden_act", "gelu_pytorch_tanh"),
    activation_aliases={"gelu": "gelu_pytorch_tanh"},
    model_type="gemma",
    transformers_class="GemmaForCausalLM",
    config_class="GemmaConfig",
    default_model="gemma-2b",
    converter=convert.convert_gemma,
    genai_type="gemma",
    settings=settings,
    refusals=refusals,
    tiny=fixtures.small("gemma-2b", **{**SMALL, "num_key_value_heads": 1}),  # MQA, as 2b
    hf_model_types=("gemma",),
)

ENTRIES = (GEMMA,)
