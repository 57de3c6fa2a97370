"""Gemma 3, the text-only layout (Gemma3ForCausalLM: google/gemma-3-1b-pt, fine-tunes), through
MaxText's multimodal Gemma 3 mapping (convert.py, text_only): five local layers, then a global
one, each kind with its own RoPE."""

from __future__ import annotations

from typing import Any

from onnxforge.families import fixtures
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.architectures.base import (
    APART_HEAD_DIM,
    GEMMA_TIED_HEAD,
    GENAI_DECODER_ONLY,
    SMALL,
    Architecture,
    HfConfig,
    refuse_biases,
    rope_parameters,
    scaling_type,
    sliding_window,
)
from onnxforge.families.maxtext.architectures.gemma2 import refuse_query_scalar, soft_caps

# MaxText's Gemma 3 layers: five local (sliding-window) layers, then a global one, repeated
# (models/gemma3.py GEMMA3_ATTENTION_PATTERN).
GEMMA3_PATTERN = ("sliding_attention",) * 5 + ("full_attention",)


def gemma3_ropes(hf_config: HfConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gemma 3's two RoPEs, (global layers', local layers'), each with its ``rope_theta``:
    config.json before transformers 5 keeps them as rope_theta + rope_scaling and
    rope_local_base_freq, since then as rope_parameters per layer type."""
    per_layer = hf_config.get("rope_parameters") or {}
    if "full_attention" in per_layer or "sliding_attention" in per_layer:
        full = dict(per_layer.get("full_attention") or {})
        local = dict(per_layer.get("sliding_attention") or {})
    else:
        full = {
            "rope_theta": hf_config.get("rope_theta", 1_000_000.0),
            **rope_parameters(hf_config),
        }
        local = {"rope_type": "default", "rope_theta": hf_config.get("rope_local_base_freq")}
    for rope in (full, local):
        rope["rope_type"] = scaling_type(rope)
    full.setdefault("rope_theta", 1_000_000.0)
    local["rope_theta"] = local.get("rope_theta") or 10_000.0
    return full, local


def settings(hf_config: HfConfig) -> dict[str, Any]:
    full, local = gemma3_ropes(hf_config)
    return {
        "sliding_window_size": sliding_window(hf_config) or 4096,
        "rope_max_timescale": float(full["rope_theta"]),
        "local_rope_max_timescale": float(local["rope_theta"]),
        # MaxText scales the global layers' RoPE linearly; never the local layers'.
        "rope_linear_scaling_factor": float(full.get("factor", 1.0))
        if full["rope_type"] == "linear"
        else 1.0,
        **soft_caps(hf_config),
        **GEMMA_TIED_HEAD,
    }


def refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    reasons = []
    full, local = gemma3_ropes(hf_config)
    if full["rope_type"] not in ("default", "linear") or local["rope_type"] != "default":
        reasons.append(
            f"rope_parameters (global {full['rope_type']!r}, local {local['rope_type']!r}): "
            f"MaxText's {model_name} scales only the global layers' RoPE, linearly"
        )
    reasons += refuse_biases(hf_config, model_name)
    if hf_config.get("attn_logit_softcapping") is not None:  # Gemma 3 publishes none
        reasons.append(
            f"attn_logit_softcapping {hf_config['attn_logit_softcapping']}: transformers' Gemma 3 "
            "(the reference, 5.17) does not apply it, so nothing could check MaxText's"
        )
    layer_types = hf_config.get("layer_types")
    pattern = [GEMMA3_PATTERN[i % len(GEMMA3_PATTERN)] for i in range(len(layer_types or []))]
    if layer_types and list(layer_types) != pattern:
        reasons.append(
            "layer_types: MaxText's Gemma 3 has five sliding-window layers, then a global "
            "one, repeated"
        )
    if hf_config.get("sliding_window_pattern", len(GEMMA3_PATTERN)) != len(GEMMA3_PATTERN):
        reasons.append(
            f"sliding_window_pattern {hf_config['sliding_window_pattern']}: MaxText's "
            f"Gemma 3 has a global layer every {len(GEMMA3_PATTERN)}"
        )
    if hf_config.get("use_bidirectional_attention"):
        reasons.append(f"use_bidirectional_attention: MaxText's {model_name} attends causally")
    return reasons + refuse_query_scalar(hf_config, model_name)


GEMMA3 = Architecture(
    fixed_norm_epsilon=1e-6,
    always_tied=True,
    activation=("hidden_activation", "gelu_pytorch_tanh"),
    model_type="gemma3",
    transformers_class="Gemma3ForCausalLM",
    config_class="Gemma3TextConfig",
    default_model="gemma3-4b",
    converter=convert.with_to_maxtext("gemma3-4b", text_only=True),
    genai_type=GENAI_DECODER_ONLY,
    settings=settings,
    refusals=refusals,
    tiny=fixtures.small(
        "gemma3-4b",
        **SMALL
        | {
            "num_hidden_layers": 6,  # five local layers, then a global one: both tested
            "head_dim": APART_HEAD_DIM,
        },
        query_pre_attn_scalar=APART_HEAD_DIM,  # = head_dim, as gemma-3-1b and -4b have it
        sliding_window=8,  # shorter than parity's long input: the window is tested
    ),
    hf_model_types=("gemma3_text",),
    hf_rope_types=("default", "linear"),
)

ENTRIES = (GEMMA3,)
