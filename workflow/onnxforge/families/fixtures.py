"""The tiny examples are the published models, small: each architecture's test config is its
published model's config.json (``published/<model>.json``; where each copy came from:
``published/SOURCES.md``) with only its widths and counts made small (``small``). Every other
field (tied embeddings, RoPE scaling, norm epsilon, windows, soft caps, biases, routing) stays
as published, so a fixture cannot hide a field its model has.

Pure Python: the catalog and the Snakefile read the architectures in the ``jax`` environment.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("published")

# What a tiny example may make small: widths, counts and lengths, and the token ids (which must
# fall in its small vocabulary). Everything else is the published model's (max_position_embeddings
# too: RoPE scalings read it, and it costs nothing).
TOKEN_IDS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})
SIZE_FIELDS = TOKEN_IDS | frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "moe_intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_local_experts",
        "num_experts",
        "n_routed_experts",
        "n_shared_experts",
        "q_lora_rank",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "qk_head_dim",  # qk_nope_head_dim + qk_rope_head_dim
        "sliding_window",  # a length: shorter than parity's long input, so it is tested
        "query_pre_attn_scalar",  # head_dim's (or hidden/heads'): it follows them
        "layer_types",  # one per layer: the published pattern's first layers
        "first_k_dense_replace",  # a count of layers
        "max_window_layers",  # a count of layers
        "initial_context_length",
    }
)

# Published fields that are not the model's math, and that transformers' config classes do not
# take as such: provenance, the checkpoint's storage, training-only losses, serving hints.
NOT_MODEL_FIELDS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "auto_map",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "quantization_config",  # the hub's storage (DeepSeek V3's fp8, GPT-OSS's MXFP4)
        "use_cache",
        "cache_implementation",
        "initializer_range",
        "attention_dropout",
        "router_aux_loss_coef",
        "aux_loss_alpha",
        "seq_aux",
        "output_router_logits",
        "ep_size",
        "pretraining_tp",
    }
)


@cache
def _read(model: str) -> dict[str, Any]:
    return json.loads((PUBLISHED / f"{model}.json").read_text())


def published(model: str) -> dict[str, Any]:
    """The published config.json of ``model`` (MaxText's name for it), its text model's part
    where the file is a multimodal one (Gemma 3 4B's ``text_config``); a copy of its own."""
    config = _read(model)
    return copy.deepcopy(config.get("text_config", config))


def small(model: str, **sizes: Any) -> dict[str, Any]:
    """``model``'s published config with ``sizes`` (``SIZE_FIELDS`` only) in place of its
    own; without what is not the model (``NOT_MODEL_FIELDS``) or would not fit the tiny one
    (its token ids: the config class's defaults instead); its ``layer_types`` pattern for the
    tiny number of layers."""
    wrong = set(sizes) - SIZE_FIELDS
    if wrong:
        raise ValueError(f"{sorted(wrong)} are no widths or counts: a fixture keeps them")
    config = {
        key: value
        for key, value in published(model).items()
        if key not in NOT_MODEL_FIELDS | TOKEN_IDS and key != "model_type"
    } | sizes
    if config.get("layer_types") and "layer_types" not in sizes:
        config["layer_types"] = layer_types(model, config["num_hidden_layers"])
    return config


def layer_types(model: str, layers: int) -> list[str] | None:
    """The published model's pattern of layer types (GPT-OSS: sliding, full, ...) for
    ``layers`` layers, repeated as its own layers repeat it; None where it publishes none."""
    pattern = published(model).get("layer_types")
    return [pattern[i % len(pattern)] for i in range(layers)] if pattern else None
