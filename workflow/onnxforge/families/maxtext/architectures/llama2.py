"""Llama 2: MaxText's llama_or_mistral_ckpt converter, plain RoPE (``recognize`` gives Llama
3's scaled RoPE to llama3.py)."""

from __future__ import annotations

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    SMALL,
    Architecture,
    HfConfig,
    llama_or_mistral_ckpt_refusals,
)
from onnxforge.families.maxtext.architectures.llama3 import llama_refusals, llama_settings


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    """Llama's, and its converter's (llama_or_mistral_ckpt)."""
    return llama_refusals(hf_config, model_name) + llama_or_mistral_ckpt_refusals(
        hf_config, model_name
    )


LLAMA2 = Architecture(
    quantized=True,
    model_type="llama",
    transformers_class="LlamaForCausalLM",
    config_class="LlamaConfig",
    default_model="llama2-7b",
    converter=convert.convert_llama_like,
    genai_type="llama",
    # config.json's model_type "llama" is Llama 3's too: one reading of it (llama3.py)
    settings=llama_settings,
    refusals=refusals,
    tiny=fixtures.small("llama2-7b", **{**SMALL, "num_key_value_heads": 4}),  # MHA, as 7b
    hf_model_types=("llama",),
)

ENTRIES = (LLAMA2,)
