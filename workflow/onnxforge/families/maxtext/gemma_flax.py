"""Gemma (v1) weights in Google's Flax layout, the one MaxText's ``convert_gemma_chkpt`` reads,
from the Hugging Face layout's tensors.

MaxText converts Gemma (v1) only from the Flax checkpoint (``google/gemma-2b-flax``), while
most Gemmas (every fine-tune) exist only in the Hugging Face layout. This writes the same
weights in the Flax layout, reading one Hugging Face tensor at a time; MaxText's converter
then restores the whole tree, as it does for a downloaded Flax checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Tensors = Callable[[str], np.ndarray]  # a Hugging Face tensor by name, as float32


def write_gemma_flax(tensor: Tensors, config: dict[str, Any], directory: Path) -> None:
    """The Gemma checkpoint ``config`` (config.json) and ``tensor`` describe, as Google's Flax
    Gemma checkpoint stores it.

    An Orbax PyTree of flat ``transformer/...`` keys with ``{"w": ...}`` / ``{"scale": ...}``
    leaves, the tree MaxText's ``convert_gemma_chkpt.py`` restores and nests. Flax einsum
    shapes: q ``(heads, d, head_dim)``; kv ``(2, kv_heads, d, head_dim)``, or qkv ``(3, heads,
    d, head_dim)`` when every query head has its own kv head; attn_vec ``(heads, head_dim, d)``;
    gating ``(2, d, mlp)`` (gate, up); linear ``(mlp, d)``. Norm scales are stored as offsets
    from one in both layouts (``x * (1 + scale)``), and both models scale the embedding by
    sqrt(d) themselves, so those copy over unchanged. Written float32.
    """
    import orbax.checkpoint as ocp

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    d = config["hidden_size"]
    head_dim = config.get("head_dim") or d // heads

    def per_head(name: str, n: int) -> np.ndarray:  # HF [n * head_dim, d] -> [n, d, head_dim]
        return tensor(name).reshape(n, head_dim, d).transpose(0, 2, 1)

    tree = {
        "transformer/embedder": {"input_embedding": tensor("model.embed_tokens.weight")},
        "transformer/final_norm": {"scale": tensor("model.norm.weight")},
    }
    for i in range(config["num_hidden_layers"]):
        hf, flax = f"model.layers.{i}.", f"transformer/layer_{i}/"
        q = per_head(hf + "self_attn.q_proj.weight", heads)
        k = per_head(hf + "self_attn.k_proj.weight", kv_heads)
        v = per_head(hf + "self_attn.v_proj.weight", kv_heads)
        if kv_heads == heads:
            tree[flax + "attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
        else:
            tree[flax + "attn/q_einsum"] = {"w": q}
            tree[flax + "attn/kv_einsum"] = {"w": np.stack([k, v])}
        del q, k, v
        out = tensor(hf + "self_attn.o_proj.weight")  # [d, heads * head_dim]
        tree[flax + "attn/attn_vec_einsum"] = {"w": out.T.reshape(heads, head_dim, d)}
        gate, up = tensor(hf + "mlp.gate_proj.weight"), tensor(hf + "mlp.up_proj.weight")
        tree[flax + "mlp/gating_einsum"] = {"w": np.stack([gate.T, up.T])}
        del gate, up
        tree[flax + "mlp/linear"] = {"w": tensor(hf + "mlp.down_proj.weight").T}
        tree[flax + "pre_attention_norm"] = {"scale": tensor(hf + "input_layernorm.weight")}
        tree[flax + "pre_ffw_norm"] = {"scale": tensor(hf + "post_attention_layernorm.weight")}
    tree = {
        key: {n: np.ascontiguousarray(a, np.float32) for n, a in leaves.items()}
        for key, leaves in tree.items()
    }
    ocp.PyTreeCheckpointer().save(str(Path(directory).resolve()), tree)


def from_hugging_face(checkpoint_dir: Path, config: dict[str, Any], directory: Path) -> None:
    """The Flax layout of the Hugging Face Gemma checkpoint at ``checkpoint_dir``."""
    from onnxforge.core.safetensors_stream import CheckpointReader

    reader = CheckpointReader(checkpoint_dir)
    write_gemma_flax(lambda name: np.asarray(reader.read(name), np.float32), config, directory)
