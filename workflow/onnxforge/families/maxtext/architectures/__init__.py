"""The Hugging Face architectures the maxtext family reads, one file each: its ``Architecture``
entry (converter, tiny test config, how ``onnxforge build`` recognizes it), the MaxText settings
it gives a config.json and the fields it refuses, and ONNX Runtime GenAI's model type for it.
``base`` holds what they share. This module gathers the registry.

A new architecture: a file here with ``ENTRIES``, and its name in ``FILES`` (the order is the
examples' and, where two read one config.json model_type, which comes first).

Pure Python (no MaxText import): the catalog and the Snakefile use it in the ``jax``
environment too.
"""

from __future__ import annotations

from typing import Any

from onnxforge.core.errors import InputError
from onnxforge.families.maxtext.architectures import (
    deepseek,
    gemma,
    gemma2,
    gemma3,
    gpt_oss,
    llama2,
    llama3,
    mistral,
    mixtral,
    qwen3,
    qwen3_moe,
)
from onnxforge.families.maxtext.architectures.base import (
    Architecture,
    HfConfig,
    decoder_layers,
    rope_type,
)
from onnxforge.families.maxtext.architectures.llama3 import LLAMA3_ROPE_SCALING

__all__ = [
    "ARCHITECTURES",
    "FILES",
    "LLAMA3_ROPE_SCALING",
    "Architecture",
    "architecture",
    "decoder_layers",
    "genai_type",
    "maxtext_overrides",
    "recognize",
    "rope_type",
    "unsupported",
]

FILES = (
    llama2,
    mistral,
    mixtral,
    gemma,
    llama3,
    qwen3,
    qwen3_moe,
    gemma2,
    gemma3,
    deepseek,
    gpt_oss,
)
ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for f in FILES for a in f.ENTRIES}


def architecture(hf_config: HfConfig, source: str, model_name: str | None = None) -> Architecture:
    """The architecture that converts ``hf_config``'s model_type; where several do (Llama 2
    and Llama 3.1 are both ``llama``), the one whose MaxText models ``model_name`` (the
    catalog's ``options.model``) belongs to, else the first."""
    model_type = hf_config.get("model_type")
    candidates = [a for a in ARCHITECTURES.values() if model_type in a.converts]
    if not candidates:
        known = sorted({t for a in ARCHITECTURES.values() for t in a.converts})
        raise InputError(
            f"{source}: model_type {model_type!r} is not one the maxtext family stages; "
            f"known: {known}"
        )
    if model_name:
        for arch in candidates:
            if model_name == arch.default_model or model_name.startswith(arch.series + "-"):
                return arch
    return candidates[0]


def maxtext_overrides(hf_config: HfConfig, model_name: str | None = None) -> dict[str, Any]:
    """MaxText settings that make its model match this checkpoint's config.json (the same for
    every architecture of one model_type)."""
    return architecture(hf_config, "config.json", model_name).maxtext_overrides(hf_config)


def unsupported(hf_config: HfConfig, model_name: str) -> list[str]:
    """The config.json fields MaxText's ``model_name`` cannot honor, each with why."""
    return architecture(hf_config, "config.json", model_name).unsupported(hf_config, model_name)


def genai_type(hf_config: HfConfig, source: str) -> str | None:
    """ONNX Runtime GenAI's ``model.type`` for a staged config.json, as its architecture
    declares it (None: GenAI cannot run it). GenAI sees config.json only: the architectures of
    one model_type declare the same (tests check)."""
    return architecture(hf_config, source).genai_type


def recognize(hf_config: HfConfig, source: str) -> Architecture | None:
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
