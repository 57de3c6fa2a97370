"""The Hugging Face architectures the maxtext family reads, and how each maps onto MaxText.

Pure Python (no MaxText import): the catalog and the Snakefile use it in the ``jax``
environment too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxforge.errors import InputError


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's model_type
    transformers_class: str  # the reference, and the writer of tiny checkpoints
    config_class: str
    default_model: str  # MaxText's configs/models/<name>.yml
    converter: str  # which MaxText converter stages it (see convert.py)
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
            "llama_or_mistral",
            {**_TINY, "num_key_value_heads": 4},  # llama2-7b: one kv head per query head
        ),
        Architecture(
            "mistral",
            "MistralForCausalLM",
            "MistralConfig",
            "mistral-7b",
            "llama_or_mistral",
            _TINY,
        ),
        Architecture(
            "mixtral",
            "MixtralForCausalLM",
            "MixtralConfig",
            "mixtral-8x7b",
            # llama_or_mistral_ckpt's safetensors path cannot read experts (it maps every
            # tensor with expert index -1); to_maxtext's Mixtral mapping can.
            "to_maxtext:mixtral-8x7b",
            {**_TINY, "intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
        ),
        Architecture(
            "gemma",
            "GemmaForCausalLM",
            "GemmaConfig",
            "gemma-2b",
            "gemma",
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


def rope_theta(hf_config: dict[str, Any]) -> float:
    parameters = hf_config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def maxtext_overrides(hf_config: dict[str, Any]) -> dict[str, Any]:
    """MaxText settings that make its model match this checkpoint's config.json.

    Published sizes agree with MaxText's own yml; tiny and layer-truncated checkpoints then
    still build the model their weights need.
    """
    heads = hf_config["num_attention_heads"]
    overrides = {
        "base_emb_dim": hf_config["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf_config.get("num_key_value_heads", heads),
        "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        "base_mlp_dim": hf_config["intermediate_size"],
        "base_num_decoder_layers": hf_config["num_hidden_layers"],
        "vocab_size": hf_config["vocab_size"],
        "normalization_layer_epsilon": hf_config.get("rms_norm_eps", 1e-6),
        "rope_max_timescale": rope_theta(hf_config),
        "logits_via_embedding": bool(hf_config.get("tie_word_embeddings", False)),
    }
    if hf_config.get("num_local_experts"):
        overrides.update(
            num_experts=hf_config["num_local_experts"],
            num_experts_per_tok=hf_config["num_experts_per_tok"],
            base_moe_mlp_dim=hf_config["intermediate_size"],
        )
    return overrides
