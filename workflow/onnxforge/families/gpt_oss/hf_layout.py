"""Hugging Face GptOss safetensors names -> our parameter paths.

Each rule reads one checkpoint tensor once and fills one or more parameters: the fused,
interleaved ``gate_up_proj`` (gate on even columns, up on odd) becomes two kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxforge.families.gpt_oss.config import GptOssConfig

Transform = Callable[[np.ndarray], np.ndarray]


def same(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    # torch Linear stores [out, in]; we multiply x @ kernel with kernel [in, out].
    return np.ascontiguousarray(x.T)


def even_columns(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[..., ::2])


def odd_columns(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[..., 1::2])


@dataclass(frozen=True)
class TensorRule:
    checkpoint_name: str
    targets: dict[tuple[str, ...], Transform]


def tensor_rules(cfg: GptOssConfig) -> list[TensorRule]:
    embedding_targets: dict[tuple[str, ...], Transform] = {("embedding",): same}
    if cfg.tie_word_embeddings:
        embedding_targets[("lm_head",)] = transpose
    rules = [
        TensorRule("model.embed_tokens.weight", embedding_targets),
        TensorRule("model.norm.weight", {("norm", "scale"): same}),
    ]
    if not cfg.tie_word_embeddings:
        rules.append(TensorRule("lm_head.weight", {("lm_head",): transpose}))
    for i in range(cfg.num_hidden_layers):
        hf = f"model.layers.{i}"
        ours = ("layers", str(i))
        attn = (*ours, "attention")
        mlp = (*ours, "mlp")
        rules += [
            TensorRule(f"{hf}.input_layernorm.weight", {(*ours, "input_norm", "scale"): same}),
            TensorRule(
                f"{hf}.post_attention_layernorm.weight",
                {(*ours, "post_attention_norm", "scale"): same},
            ),
            TensorRule(f"{hf}.self_attn.sinks", {(*attn, "sinks"): same}),
        ]
        for proj in "qkvo":
            rules += [
                TensorRule(
                    f"{hf}.self_attn.{proj}_proj.weight", {(*attn, f"{proj}_kernel"): transpose}
                ),
                TensorRule(f"{hf}.self_attn.{proj}_proj.bias", {(*attn, f"{proj}_bias"): same}),
            ]
        rules += [
            TensorRule(f"{hf}.mlp.router.weight", {(*mlp, "router_kernel"): transpose}),
            TensorRule(f"{hf}.mlp.router.bias", {(*mlp, "router_bias"): same}),
            TensorRule(
                f"{hf}.mlp.experts.gate_up_proj",
                {(*mlp, "gate_kernel"): even_columns, (*mlp, "up_kernel"): odd_columns},
            ),
            TensorRule(
                f"{hf}.mlp.experts.gate_up_proj_bias",
                {(*mlp, "gate_bias"): even_columns, (*mlp, "up_bias"): odd_columns},
            ),
            TensorRule(f"{hf}.mlp.experts.down_proj", {(*mlp, "down_kernel"): same}),
            TensorRule(f"{hf}.mlp.experts.down_proj_bias", {(*mlp, "down_bias"): same}),
        ]
    return rules
