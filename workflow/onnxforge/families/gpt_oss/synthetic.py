"""Tiny GPT-OSS checkpoints for tests and the offline default, written by transformers.

transformers writes the model (``save_pretrained``: real safetensors, real config.json). With
``mxfp4=true`` the expert weights are then re-packed into the hub's MXFP4 layout
(``*_blocks``/``*_scales`` plus ``quantization_config``), which transformers itself reads back
by dequantizing, so the reference stays independent of our decoder. With ``original=true``
the same MXFP4 weights are also written in OpenAI's ``original/`` layout, as the hub's
gpt-oss repositories ship both. ``trained=STEPS``: the float model is trained on the project's
passage first (``training``), so both layouts hold the trained weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import texts
from onnxforge.core.errors import InputError
from onnxforge.families import fixtures, training
from onnxforge.families.gpt_oss import mxfp4
from onnxforge.families.synthetic import randomize_torch_model

# A tiny model that still has every feature: grouped heads, sinks, a sliding window shorter
# than the parity inputs, YaRN, several experts with top-k routing. Widths are multiples of
# 32 so that the MXFP4 layout applies. It is openai/gpt-oss-20b's config.json, small
# (fixtures.small): its top-4 routing among 8 experts rather than 32, a head_dim apart from
# hidden / heads as published (64 over 2880 / 64).
PUBLISHED = "gpt-oss-20b"
TINY = fixtures.small(
    PUBLISHED,
    vocab_size=256,
    hidden_size=64,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_local_experts=8,
    sliding_window=16,
)
OPTIONS = {"init_std", "tie_word_embeddings", "mxfp4", "original", "trained"}
# As in openai/gpt-oss-20b's config.json.
MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def synthesize(out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
    import torch
    import transformers

    unknown = set(overrides) - set(TINY) - OPTIONS
    if unknown:
        raise InputError(
            f"synthetic://gpt_oss: unknown parameter(s) {sorted(unknown)}; "
            f"known: {sorted(TINY)} and {sorted(OPTIONS)}"
        )
    # A copy: transformers' config classes write into the RoPE dicts they are given.
    settings = copy.deepcopy({**TINY, **overrides})
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:  # as published
        settings["layer_types"] = fixtures.layer_types(
            PUBLISHED, int(settings["num_hidden_layers"])
        )
    init_std = float(settings.pop("init_std", 0.1))
    original = bool(settings.pop("original", False))
    quantize = bool(settings.pop("mxfp4", False)) or original
    trained = training.trained_steps(settings.pop("trained", 0), "synthetic://gpt_oss")
    torch.manual_seed(seed)
    model = transformers.GptOssForCausalLM(transformers.GptOssConfig(**settings))
    randomize_torch_model(model, init_std)
    texts.write_tiny_tokenizer(Path(out_dir), settings["vocab_size"])
    if trained:  # on the float weights: the MXFP4 layouts below are written from them
        training.train_synthetic(model, Path(out_dir), trained, seed, "synthetic://gpt_oss")
    model.save_pretrained(out_dir)
    if quantize:
        _repack_experts_as_mxfp4(Path(out_dir))
    if original:
        _write_openai_layout(Path(out_dir), settings)


def _repack_experts_as_mxfp4(directory: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        # transformers keeps [e, in, out]; MXFP4 packs along the input axis of [e, out, in].
        blocks, scales = mxfp4.quantize(np.swapaxes(tensors.pop(name), 1, 2))
        tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = blocks, scales
    save_file(tensors, str(path), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = MXFP4_CONFIG
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_openai_layout(directory: Path, settings: dict[str, Any]) -> None:
    """``original/``: OpenAI's names for the same (already MXFP4) tensors as the root."""
    from safetensors.numpy import load_file, save_file

    hf = load_file(str(directory / "model.safetensors"))
    out = {
        "embedding.weight": hf["model.embed_tokens.weight"],
        "norm.scale": hf["model.norm.weight"],
        "unembedding.weight": hf["lm_head.weight"],
    }
    for i in range(settings["num_hidden_layers"]):
        src, dst = f"model.layers.{i}", f"block.{i}"
        attn = f"{src}.self_attn"
        for kind in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{kind}"] = np.concatenate(
                [hf[f"{attn}.{p}_proj.{kind}"] for p in "qkv"], axis=0
            )
            out[f"{dst}.attn.out.{kind}"] = hf[f"{attn}.o_proj.{kind}"]
            out[f"{dst}.mlp.gate.{kind}"] = hf[f"{src}.mlp.router.{kind}"]
        out[f"{dst}.attn.sinks"] = hf[f"{attn}.sinks"]
        out[f"{dst}.attn.norm.scale"] = hf[f"{src}.input_layernorm.weight"]
        out[f"{dst}.mlp.norm.scale"] = hf[f"{src}.post_attention_layernorm.weight"]
        experts = f"{src}.mlp.experts"
        for theirs, ours in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            out[f"{dst}.mlp.{theirs}_weight.blocks"] = hf[f"{experts}.{ours}_blocks"]
            out[f"{dst}.mlp.{theirs}_weight.scales"] = hf[f"{experts}.{ours}_scales"]
            out[f"{dst}.mlp.{theirs}_bias"] = hf[f"{experts}.{ours}_bias"]
    (directory / "original").mkdir()
    save_file(out, str(directory / "original" / "model.safetensors"))
    config = {
        "num_hidden_layers": settings["num_hidden_layers"],
        "num_experts": settings["num_local_experts"],
        "experts_per_token": settings["num_experts_per_tok"],
        "vocab_size": settings["vocab_size"],
        "hidden_size": settings["hidden_size"],
        "intermediate_size": settings["intermediate_size"],
        "swiglu_limit": 7.0,
        "head_dim": settings["head_dim"],
        "num_attention_heads": settings["num_attention_heads"],
        "num_key_value_heads": settings["num_key_value_heads"],
        "sliding_window": settings["sliding_window"],
        "initial_context_length": 4096,
        "rope_theta": 150000.0,
        "rope_scaling_factor": 32.0,
        "rope_ntk_alpha": 1.0,
        "rope_ntk_beta": 32.0,
    }
    (directory / "original" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
