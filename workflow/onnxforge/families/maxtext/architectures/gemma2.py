"""Gemma 2: one MaxText layer is a (local, global) pair of Hugging Face layers, with logit
soft-capping; through MaxText's to_maxtext converter."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    APART_HEAD_DIM,
    GEMMA_TIED_HEAD,
    SMALL,
    Architecture,
    HfConfig,
    refuse_biases,
    refuse_rope,
    sliding_window,
)


def soft_caps(hf_config: HfConfig) -> dict[str, float]:
    """Gemma 2's and 3's logit soft-capping (0: none)."""
    return {
        "final_logits_soft_cap": float(hf_config.get("final_logit_softcapping") or 0),
        "attn_logits_soft_cap": float(hf_config.get("attn_logit_softcapping") or 0),
    }


def refuse_query_scalar(hf_config: HfConfig, model_name: str) -> list[str]:
    """MaxText's gemma3-27b scales queries by (emb_dim / heads) ** -0.5, every other Gemma 2
    or 3 by head_dim ** -0.5 (models/gemma3.py get_query_pre_attn_scalar)."""
    scalar, named = hf_config.get("head_dim"), "head_dim"
    if model_name == "gemma3-27b":
        scalar = hf_config["hidden_size"] // hf_config["num_attention_heads"]
        named = "hidden_size / num_attention_heads"
    if hf_config.get("query_pre_attn_scalar", scalar) == scalar:
        return []
    return [
        f"query_pre_attn_scalar {hf_config['query_pre_attn_scalar']}: MaxText's "
        f"{model_name} scales queries by {named} ({scalar}) ** -0.5"
    ]


def settings(hf_config: HfConfig) -> dict[str, Any]:
    return {
        # One MaxText gemma2 layer is a (local, global) pair of Hugging Face layers.
        "base_num_decoder_layers": hf_config["num_hidden_layers"] // 2,
        "sliding_window_size": sliding_window(hf_config) or 4096,
        **soft_caps(hf_config),
        **GEMMA_TIED_HEAD,
    }


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    reasons = refuse_rope(hf_config, model_name) + refuse_biases(hf_config, model_name)
    if hf_config["num_hidden_layers"] % 2:
        reasons.append(
            f"num_hidden_layers {hf_config['num_hidden_layers']}: MaxText's gemma2 layers "
            "are (local, global) pairs; stage an even number of layers"
        )
    return reasons + refuse_query_scalar(hf_config, model_name)


GEMMA2 = Architecture(
    fixed_norm_epsilon=1e-6,
    always_tied=True,
    activation=("hidden_activation", "gelu_pytorch_tanh"),
    model_type="gemma2",
    transformers_class="Gemma2ForCausalLM",
    config_class="Gemma2Config",
    default_model="gemma2-9b",
    converter=convert.with_to_maxtext("gemma2-9b"),
    genai_type="gemma2",
    settings=settings,
    refusals=refusals,
    tiny=fixtures.small(
        "gemma2-9b",
        **SMALL
        | {
            "num_hidden_layers": 4,  # two MaxText layers, each a (local, global) pair
            "head_dim": APART_HEAD_DIM,
        },
        query_pre_attn_scalar=APART_HEAD_DIM,  # = head_dim, as gemma-2-2b and -9b have it
        sliding_window=8,  # shorter than parity's long input: the window is tested
    ),
    hf_model_types=("gemma2",),
    sublayers=("_local", "_global"),
)

ENTRIES = (GEMMA2,)
