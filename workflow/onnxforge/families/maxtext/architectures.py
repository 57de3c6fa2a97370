"""The Hugging Face architectures the maxtext family reads, and how each maps onto MaxText.

Pure Python (no MaxText import): the catalog and the Snakefile use it in the ``jax``
environment too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxforge.errors import InputError
from onnxforge.families.maxtext import convert


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's model_type
    transformers_class: str  # the reference, and the writer of tiny checkpoints
    config_class: str
    default_model: str  # MaxText's configs/models/<name>.yml
    converter: convert.Converter  # MaxText's converter that stages it
    tiny: dict[str, Any] = field(default_factory=dict)  # a tiny config for tests
    extra_overrides: dict[str, Any] = field(default_factory=dict)


_TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}

ARCHITECTURES = {
    a.model_type: a
    for a in (
        Architecture(
            "llama",
            "LlamaForCausalLM",
            "LlamaConfig",
            "llama2-7b",
            convert.convert_llama_like,
            {**_TINY, "num_key_value_heads": 4},  # llama2-7b: one kv head per query head
        ),
        Architecture(
            "mistral",
            "MistralForCausalLM",
            "MistralConfig",
            "mistral-7b",
            convert.convert_llama_like,
            _TINY,
        ),
        Architecture(
            "mixtral",
            "MixtralForCausalLM",
            "MixtralConfig",
            "mixtral-8x7b",
            # llama_or_mistral_ckpt's safetensors path cannot read experts (it maps every
            # tensor with expert index -1); to_maxtext's Mixtral mapping can.
            convert.with_to_maxtext("mixtral-8x7b"),
            {**_TINY, "intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
        ),
        Architecture(
            "gemma",
            "GemmaForCausalLM",
            "GemmaConfig",
            "gemma-2b",
            convert.convert_gemma,
            {**_TINY, "num_key_value_heads": 1, "tie_word_embeddings": True},
        ),
    )
}


def architecture(hf_config: dict[str, Any], source: str) -> Architecture:
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise InputError(
            f"{source}: model_type {model_type!r} is not one the maxtext family stages; "
            f"known: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]
