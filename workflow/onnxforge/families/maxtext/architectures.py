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
    # What `onnxforge build SOURCE` recognizes as this architecture (``recognize``): the
    # config.json model_types, and the RoPE scalings (``rope_type``; "default": none) whose
    # frequencies default_model reproduces (Llama 2's plain RoPE, not Llama 3's "llama3").
    hf_model_types: tuple[str, ...] = ()
    hf_rope_types: tuple[str, ...] = ("default",)


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
            hf_model_types=("llama",),
        ),
        Architecture(
            "mistral",
            "MistralForCausalLM",
            "MistralConfig",
            "mistral-7b",
            convert.convert_llama_like,
            _TINY,
            hf_model_types=("mistral",),
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
            hf_model_types=("mixtral",),
        ),
        Architecture(
            "gemma",
            "GemmaForCausalLM",
            "GemmaConfig",
            "gemma-2b",
            convert.convert_gemma,
            {**_TINY, "num_key_value_heads": 1, "tie_word_embeddings": True},
            hf_model_types=("gemma",),
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


def rope_type(hf_config: dict[str, Any]) -> str:
    """config.json's RoPE scaling (``rope_scaling``, or transformers 5's ``rope_parameters``),
    "default" where it has none."""
    scaling = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def recognize(hf_config: dict[str, Any], source: str) -> Architecture | None:
    """The one architecture whose ``hf_model_types`` and ``hf_rope_types`` fit config.json;
    None when no entry names its model_type; an error naming the candidates when its RoPE
    scaling fits none of them, or several."""
    model_type = hf_config.get("model_type")
    candidates = [a for a in ARCHITECTURES.values() if model_type in a.hf_model_types]
    if not candidates:
        return None
    rope = rope_type(hf_config)
    fitting = [a for a in candidates if rope in a.hf_rope_types]
    if len(fitting) == 1:
        return fitting[0]
    offered = ", ".join(f"{a.default_model} (rope {'/'.join(a.hf_rope_types)})" for a in candidates)
    problem = "none of" if not fitting else "several of"
    raise InputError(
        f"{source}: model_type {model_type!r} with rope_type {rope!r} fits {problem} MaxText's "
        f"{offered}; choose one with --maxtext-model NAME (configs/models/NAME.yml)"
    )
