"""Tiny Llama / Mistral / Mixtral / Gemma checkpoints, written by transformers itself.

``synthetic://maxtext?arch=mistral&seed=0``: transformers builds the model from a tiny config
of that architecture and ``save_pretrained`` writes real safetensors and config.json. Every
tensor is random and seeded (norms near one), so a mapping mistake changes the logits.

MaxText stages Gemma (v1) only from Google's Flax checkpoint (``google/gemma-2b-flax``,
``google/gemma-7b-flax``), so for ``arch=gemma`` the same weights are also written in that
layout under ``flax/``, as the hub ships both layouts of one model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxforge.errors import InputError
from onnxforge.families import tiny_tokenizer
from onnxforge.families.base import randomize_torch_model
from onnxforge.families.maxtext.architectures import ARCHITECTURES

OPTIONS = {"arch", "init_std"}
FLAX = "flax"  # gemma: the Flax/Orbax copy of the weights (see write_gemma_flax)


def synthesize(out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
    import torch
    import transformers

    settings = dict(overrides)
    arch_name = str(settings.pop("arch", "llama"))
    if arch_name not in ARCHITECTURES:
        raise InputError(
            f"synthetic://maxtext: unknown arch {arch_name!r}; known: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[arch_name]
    init_std = float(settings.pop("init_std", 0.1))
    unknown = set(settings) - set(arch.tiny)
    if unknown:
        raise InputError(
            f"synthetic://maxtext: unknown parameter(s) {sorted(unknown)}; "
            f"known: {sorted(arch.tiny)} and {sorted(OPTIONS)}"
        )
    config = getattr(transformers, arch.config_class)(**{**arch.tiny, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, arch.transformers_class)(config)
    randomize_torch_model(model, init_std)
    model.save_pretrained(out_dir)
    tiny_tokenizer.write(Path(out_dir), config.vocab_size)  # a KV export's folder needs one
    if arch_name == "gemma":
        write_gemma_flax(model, Path(out_dir) / FLAX)


def write_gemma_flax(model, directory: Path) -> None:
    """A GemmaForCausalLM's weights as Google's Flax Gemma checkpoint stores them.

    An Orbax PyTree of flat ``transformer/...`` keys with ``{"w": ...}`` / ``{"scale": ...}``
    leaves, the tree MaxText's ``convert_gemma_chkpt.py`` restores and nests. Flax einsum
    shapes: q ``(heads, d, head_dim)``; kv ``(2, kv_heads, d, head_dim)``, or qkv ``(3, heads,
    d, head_dim)`` when every query head has its own kv head; attn_vec ``(heads, head_dim, d)``;
    gating ``(2, d, mlp)`` (gate, up); linear ``(mlp, d)``. Norm scales are stored as offsets
    from one in both layouts (``x * (1 + scale)``), and both models scale the embedding by
    sqrt(d) themselves, so those copy over unchanged. Kept float32 (the hub's are bfloat16).
    """
    import numpy as np
    import orbax.checkpoint as ocp

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim, d = config.head_dim, config.hidden_size
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def per_head(name: str, n: int) -> np.ndarray:  # HF [n * head_dim, d] -> [n, d, head_dim]
        return weights[name].reshape(n, head_dim, d).transpose(0, 2, 1)

    tree = {
        "transformer/embedder": {"input_embedding": weights["model.embed_tokens.weight"]},
        "transformer/final_norm": {"scale": weights["model.norm.weight"]},
    }
    for i in range(config.num_hidden_layers):
        hf, flax = f"model.layers.{i}.", f"transformer/layer_{i}/"
        q = per_head(hf + "self_attn.q_proj.weight", heads)
        k = per_head(hf + "self_attn.k_proj.weight", kv_heads)
        v = per_head(hf + "self_attn.v_proj.weight", kv_heads)
        if kv_heads == heads:
            tree[flax + "attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
        else:
            tree[flax + "attn/q_einsum"] = {"w": q}
            tree[flax + "attn/kv_einsum"] = {"w": np.stack([k, v])}
        out = weights[hf + "self_attn.o_proj.weight"]  # [d, heads * head_dim]
        tree[flax + "attn/attn_vec_einsum"] = {"w": out.T.reshape(heads, head_dim, d)}
        gate, up = weights[hf + "mlp.gate_proj.weight"], weights[hf + "mlp.up_proj.weight"]
        tree[flax + "mlp/gating_einsum"] = {"w": np.stack([gate.T, up.T])}
        tree[flax + "mlp/linear"] = {"w": weights[hf + "mlp.down_proj.weight"].T}
        tree[flax + "pre_attention_norm"] = {"scale": weights[hf + "input_layernorm.weight"]}
        tree[flax + "pre_ffw_norm"] = {"scale": weights[hf + "post_attention_layernorm.weight"]}
    tree = {
        key: {n: np.ascontiguousarray(a) for n, a in leaves.items()} for key, leaves in tree.items()
    }
    ocp.PyTreeCheckpointer().save(str(Path(directory).resolve()), tree)
