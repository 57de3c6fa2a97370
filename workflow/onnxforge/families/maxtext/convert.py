"""Hugging Face checkpoints -> MaxText parameters, through MaxText's own converters.

MaxText's ``llama_or_mistral_ckpt`` maps Llama, Mistral and Mixtral safetensors (its
``_hf_to_maxtext_mapping``, RoPE permutation, query scaling, expert stacking) into its scanned
layout; we register the checkpoint's own dimensions with it (its table knows only the
published sizes), keep float32 instead of its bfloat16 cast, and unroll the scanned layer axis
as MaxText's ``generate_param_only_checkpoint force_unroll=true`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import InputError

SCANNED = "layers"


def llama_like_params(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The entry MaxText's ``MODEL_PARAMS_DICT`` would hold for this checkpoint."""
    params = {
        "num_layers": hf_config["num_hidden_layers"],
        "num_heads": hf_config["num_attention_heads"],
        "num_kv_heads": hf_config.get("num_key_value_heads", hf_config["num_attention_heads"]),
        "dims_per_head": hf_config.get("head_dim")
        or hf_config["hidden_size"] // hf_config["num_attention_heads"],
        "vocab": hf_config["vocab_size"],
        "base_emb_dim": hf_config["hidden_size"],
        "base_mlp_dim": hf_config["intermediate_size"],
    }
    if hf_config.get("num_local_experts"):
        params["num_experts"] = hf_config["num_local_experts"]
    return params


def unroll(weights: dict[str, Any], num_layers: int, scan_axis: int = 1) -> dict[str, Any]:
    """decoder/layers/... stacked on ``scan_axis`` -> decoder/layers_0 ... layers_{n-1}."""
    import jax

    stacked = weights["decoder"].pop(SCANNED)
    for index in range(num_layers):
        weights["decoder"][f"{SCANNED}_{index}"] = jax.tree_util.tree_map(
            lambda array, i=index: np.ascontiguousarray(np.take(array, i, axis=scan_axis)),
            stacked,
        )
    return weights


def convert_llama_like(checkpoint_dir: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
    from maxtext.checkpoint_conversion.standalone_scripts import llama_or_mistral_ckpt as mt

    name = "onnxforge-checkpoint"
    mt.MODEL_PARAMS_DICT[name] = llama_like_params(hf_config)
    mt.CAST_DTYPE = np.float32  # its default bfloat16 would round float32/float16 weights
    try:
        weights = mt.convert_to_jax_weights(str(checkpoint_dir), name, huggingface_ckpt=True)
    except KeyError as err:
        raise InputError(
            f"{checkpoint_dir}: MaxText's converter does not know tensor {err}; "
            "is this a Llama/Mistral/Mixtral checkpoint in the Hugging Face layout?"
        ) from err
    return unroll(weights, hf_config["num_hidden_layers"])


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


CONVERTERS = {"llama_or_mistral": convert_llama_like}


def convert(converter: str, checkpoint_dir: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
    """The unscanned MaxText parameter tree (float32 numpy arrays) for a checkpoint."""
    if converter not in CONVERTERS:
        raise InputError(f"{checkpoint_dir}: no MaxText converter {converter!r} is wired up yet")
    return CONVERTERS[converter](checkpoint_dir, hf_config)


def save(weights: dict[str, Any], directory: Path) -> None:
    """MaxText's own saver: an Orbax checkpoint at ``directory/0/items`` (OCDBT, zarr3)."""
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    save_weights_to_checkpoint(str(Path(directory).resolve()), weights, 1, True, True)


def load(directory: Path) -> dict[str, Any]:
    """The parameter tree a MaxText checkpoint holds (``params.params`` of its train state)."""
    import orbax.checkpoint as ocp

    items = Path(directory).resolve() / "0" / "items"
    if not items.exists():
        raise InputError(f"{directory}: no MaxText checkpoint (0/items); re-run stage")
    return ocp.PyTreeCheckpointer().restore(str(items))["params"]["params"]
