"""Hugging Face checkpoints -> MaxText parameters, through MaxText's own converters.

Each converter is a callable ``(checkpoint_dir, hf_config, overrides) -> unscanned parameter
tree`` (float32 numpy arrays, or ``checkpoint.Deferred`` ones that ``checkpoint.save`` reads one
at a time); ``overrides`` are the MaxText settings the architecture gives that config.json
(``Architecture.convert`` passes them). Each file in ``architectures/`` names the converter its
architecture uses.

MaxText's ``llama_or_mistral_ckpt`` maps Llama, Mistral and Mixtral safetensors (its
``_hf_to_maxtext_mapping``, RoPE permutation, query scaling, expert stacking) into its scanned
layout; we register the checkpoint's own dimensions with it (its table knows only the
published sizes), keep float32 instead of its bfloat16 cast, and unroll the scanned layer axis
as MaxText's ``generate_param_only_checkpoint force_unroll=true`` does.

Gemma (v1) has no Hugging Face converter in MaxText; its ``convert_gemma_chkpt`` reads Google's
Flax checkpoint (``google/gemma-2b-flax``), which the checkpoint directory may hold under
``flax/``; without one, gemma_flax.py writes that layout from the Hugging Face tensors. It
adds one to the norm scales, pre-scales queries and the embedding, and saves a scanned MaxText
checkpoint that we restore and unroll.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core.errors import InputError
from onnxforge.families.maxtext.checkpoint import VARIABLE_COLLECTIONS, load, unroll

Converter = Callable[[Path, dict[str, Any], dict[str, Any]], dict[str, Any]]


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


def convert_llama_like(
    checkpoint_dir: Path, hf_config: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """``overrides`` unused: its parameter table takes the dimensions (``llama_like_params``)."""
    from maxtext.checkpoint_conversion.standalone_scripts import llama_or_mistral_ckpt as mt

    name = "onnxforge-checkpoint"
    mt.MODEL_PARAMS_DICT[name] = llama_like_params(hf_config)
    mt.CAST_DTYPE = np.float32  # its default bfloat16 would round float32/float16 weights
    try:
        weights = mt.convert_to_jax_weights(str(checkpoint_dir), name, huggingface_ckpt=True)
    except KeyError as err:
        raise _converter_key_error(Path(checkpoint_dir), err) from err
    return unroll(weights, hf_config["num_hidden_layers"])


GEMMA_FLAX = "flax"


def convert_gemma(
    checkpoint_dir: Path, hf_config: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """From the download's ``flax/`` folder where there is one, else from the Hugging Face
    layout (gemma_flax.py writes the Flax layout of the same weights first). ``overrides``
    unused: the Flax checkpoint has the dimensions."""
    import tempfile

    flax_dir = _flax_checkpoint((Path(checkpoint_dir) / GEMMA_FLAX).resolve())
    with tempfile.TemporaryDirectory(prefix="onnxforge-gemma-") as scratch:
        if not (flax_dir / "_METADATA").exists() and not (flax_dir / "checkpoint").exists():
            if (Path(checkpoint_dir) / GEMMA_FLAX).exists():
                raise InputError(
                    f"{flax_dir}: no Flax Gemma checkpoint (the folder holding _METADATA, as "
                    "google/gemma-2b-flax ships it); remove the folder to convert from the "
                    "Hugging Face layout instead"
                )
            # The Hugging Face layout only (every fine-tuned Gemma): write the same weights
            # in the Flax layout MaxText's converter reads.
            from onnxforge.families.maxtext import gemma_flax

            flax_dir = Path(scratch) / "flax"
            gemma_flax.from_hugging_face(Path(checkpoint_dir), hf_config, flax_dir)
        return _convert_gemma_flax(flax_dir, hf_config, Path(scratch) / "maxtext")


def _convert_gemma_flax(flax_dir: Path, hf_config: dict[str, Any], scratch: Path):
    import types
    from unittest import mock

    import jax.numpy as jnp
    from maxtext.checkpoint_conversion.standalone_scripts import convert_gemma_chkpt as mt

    heads = hf_config["num_attention_heads"]
    # Its model_size only picks the attention layout: "7b" reads qkv_einsum (one kv head per
    # query head, as Flax Gemma stores it then), "2b" q_einsum + kv_einsum.
    size = "7b" if hf_config.get("num_key_value_heads", heads) == heads else "2b"
    # main() ends by casting every weight with a local x.astype(jnp.bfloat16); for the call it
    # sees a jnp whose bfloat16 is float32, so float32 weights stay float32.
    float32_jnp = types.SimpleNamespace(**{**vars(jnp), "bfloat16": jnp.float32})
    args = ["--base_model_path", str(flax_dir), "--maxtext_model_path", str(scratch)]
    try:
        with mock.patch.object(mt, "jnp", float32_jnp):
            mt.main([*args, "--model_size", size])
    except KeyError as err:
        raise InputError(
            f"{flax_dir}: MaxText's Gemma converter found no {err} in the Flax checkpoint; "
            f"is it Gemma (v1) in the layout of google/gemma-2b-flax, with "
            f"{'qkv_einsum' if size == '7b' else 'q_einsum and kv_einsum'} as config.json's "
            "heads imply?"
        ) from err
    weights = load(Path(scratch))
    weights = {key: _numpy(value) for key, value in weights.items()}
    return unroll(weights, hf_config["num_hidden_layers"])


def _flax_checkpoint(folder: Path) -> Path:
    """The Orbax folder in a Flax Gemma download: the folder itself, or its one subfolder
    holding ``_METADATA`` (the hub repos ship it as ``2b/`` or ``7b/``)."""
    inner = [p.parent for p in folder.glob("*/_METADATA")]
    return inner[0] if not (folder / "_METADATA").exists() and len(inner) == 1 else folder


def _numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _numpy(value) for key, value in tree.items()}
    return np.asarray(tree)


def with_to_maxtext(mapping: str, text_only: bool = False) -> Converter:
    """MaxText's general converter, ``checkpoint_conversion.to_maxtext`` (Mixtral, Llama 3.1,
    Gemma 2/3, Qwen, ...: its PARAM_MAPPING and hooks), with the mapping of its model
    ``mapping`` (e.g. ``mixtral-8x7b``). ``text_only``: the mapping reads a multimodal
    checkpoint (Gemma 3), and this architecture's checkpoints are its text half."""
    return functools.partial(convert_with_to_maxtext, mapping=mapping, text_only=text_only)


# A text-only checkpoint's tensors, under the names a multimodal one gives them
# (Gemma3ForCausalLM's ``model.layers.0...`` is Gemma3ForConditionalGeneration's
# ``model.language_model.layers.0...``).
TEXT_PREFIX, MULTIMODAL_TEXT_PREFIX = "model.", "model.language_model."


def convert_with_to_maxtext(
    checkpoint_dir: Path,
    hf_config: dict[str, Any],
    overrides: dict[str, Any],
    mapping: str,
    text_only: bool = False,
) -> dict[str, Any]:
    """Its mapping reads the model's dimensions from a table of published Hugging Face configs
    (HF_MODEL_CONFIGS); we put the checkpoint's own config.json there for the run, so tiny and
    layer-truncated checkpoints convert with the same mapping.

    It runs with its lazy loader (tensor by tensor from the safetensors), but its own saver
    cannot save the lazy values (Orbax's v1 registry has no handler for them): we take the
    tree it would save and give it back as ``checkpoint.Deferred`` leaves, float32, which
    ``checkpoint.save`` reads one at a time.

    ``text_only`` (Gemma 3): MaxText's mapping reads only the multimodal layout (config.json's
    ``text_config`` and ``vision_config``, tensors under ``model.language_model.``), while
    google/gemma-3-1b-pt and most fine-tunes are Gemma3ForCausalLM's text-only layout. We give
    it the multimodal config with a vision tower of no layers and read its multimodal names
    from the text tensors; without ``use_multimodal`` MaxText builds no vision encoder, so it
    reads no vision weight."""
    import contextlib
    import tempfile
    from unittest import mock

    import transformers
    from maxtext.checkpoint_conversion import to_maxtext
    from maxtext.checkpoint_conversion.utils import hf_model_configs

    from onnxforge.families.maxtext import runtime

    config = transformers.AutoConfig.for_model(**hf_config)
    patches = contextlib.ExitStack()
    if text_only:
        vision = transformers.SiglipVisionConfig(num_hidden_layers=0)
        config = transformers.Gemma3Config(text_config=config, vision_config=vision)
        read = to_maxtext.LazyHFLoader.get_tensor

        def read_text_tensor(loader, key: str):
            if key.startswith(MULTIMODAL_TEXT_PREFIX):
                key = TEXT_PREFIX + key.removeprefix(MULTIMODAL_TEXT_PREFIX)
            return read(loader, key)

        patches.enter_context(
            mock.patch.object(to_maxtext.LazyHFLoader, "get_tensor", read_text_tensor)
        )
    model_info = to_maxtext.get_maxtext_model_info

    def model_info_with_bias_as_params(maxtext_config):
        # MaxText 0.2.5's DeepSeek V3 mapping names the routing bias params-...-gate-bias;
        # its model holds it as MoEBiasVar-...: the mapping's name is the one staged.
        abstract, treedef = model_info(maxtext_config)
        return {_as_params(key): value for key, value in abstract.items()}, treedef

    saved = {}

    def keep(_directory, weights, *args, **kwargs):
        saved["weights"] = weights

    with tempfile.TemporaryDirectory(prefix="onnxforge-to-maxtext-") as scratch, patches:
        argv = runtime.config_argv(mapping, {**overrides, "base_output_directory": scratch})
        with (
            mock.patch.dict(hf_model_configs.HF_MODEL_CONFIGS, {mapping: config}),
            mock.patch.object(to_maxtext, "get_maxtext_model_info", model_info_with_bias_as_params),
            mock.patch.object(to_maxtext, "save_weights_to_checkpoint", keep),
        ):
            to_maxtext.main(
                argv,
                lazy_load_tensors=True,
                hf_model_path=str(Path(checkpoint_dir).resolve()),
                save_dtype="float32",
                simulated_cpu_devices_count=1,
            )
    return _staged_tree(saved["weights"])


def _as_params(key: str) -> str:
    for collection in VARIABLE_COLLECTIONS[1:]:
        if key.startswith(collection + "-"):
            return "params-" + key.removeprefix(collection + "-")
    return key


def _staged_tree(weights: dict[str, Any]) -> dict[str, Any]:
    """The parameter tree ``to_maxtext`` would save, its collections merged under ``params``
    and its lazy values as ``checkpoint.Deferred`` leaves."""
    from onnxforge.families.maxtext.checkpoint import deferred

    def leaves(tree: Any, path: tuple[str, ...]) -> Any:
        if isinstance(tree, dict):
            return {key: leaves(value, (*path, key)) for key, value in tree.items()}
        if isinstance(tree, np.ndarray):
            return tree
        return deferred(lambda: np.asarray(tree), tree.shape, tree.dtype, "/".join(path))

    unknown = sorted(weights.keys() - set(VARIABLE_COLLECTIONS))
    if unknown:  # a model variable a stage would silently leave at its initial value
        raise InputError(
            f"MaxText's converter gave variable collections {unknown}, which a stage does not "
            f"hold (it holds {list(VARIABLE_COLLECTIONS)}); this architecture is not supported"
        )
    merged: dict[str, Any] = {}
    for collection in VARIABLE_COLLECTIONS:
        _merge(merged, leaves(weights.get(collection, {}), ()))
    return merged


def _merge(into: dict[str, Any], tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def _converter_key_error(checkpoint_dir: Path, err: KeyError) -> InputError:
    """MaxText's converter looked up a tensor name: one the checkpoint lacks (missing), or one
    of the checkpoint's that it has no place for (another architecture's)."""
    from onnxforge.core.safetensors_stream import read_header

    name = str(err.args[0]) if err.args else str(err)
    held = {n for f in sorted(checkpoint_dir.glob("*.safetensors")) for n in read_header(f)}
    if name not in held:
        return InputError(
            f"{checkpoint_dir}: tensor {name!r} is missing (MaxText's Llama/Mistral converter "
            "needs it); is the checkpoint complete, and config.json its own?"
        )
    return InputError(
        f"{checkpoint_dir}: MaxText's converter does not know tensor {name!r}; is this a "
        "Llama/Mistral/Mixtral checkpoint in the Hugging Face layout?"
    )
