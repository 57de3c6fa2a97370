"""Hugging Face GptOss safetensors names -> our parameter paths.

Each rule reads its checkpoint tensors once and fills one or more parameters: the fused,
interleaved ``gate_up_proj`` (gate on even columns, up on odd) becomes two kernels. Expert
weights come plain (``gate_up_proj``, as transformers saves them) or MXFP4 (``*_blocks`` and
``*_scales``, as the hub's gpt-oss checkpoints ship them).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from onnxforge import threads
from onnxforge.families.gpt_oss import mxfp4
from onnxforge.families.gpt_oss.config import GptOssConfig

Transform = Callable[..., np.ndarray]


def same(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


def transpose(x: np.ndarray, rows: int = 512) -> np.ndarray:
    """torch Linear stores [out, in]; we multiply ``x @ kernel`` with kernel [in, out].

    Tiled: a plain ``x.T`` copy of a vocabulary-sized matrix walks memory with a stride of
    one row per element and takes about 16 times longer. Each tile's rows are read only
    when needed (``x`` may be a StoredTensor), so the source is never whole in memory.
    """
    out = np.empty(x.shape[::-1], dtype=x.dtype)
    for start in range(0, x.shape[0], rows):
        out[:, start : start + rows] = x[start : start + rows].T
    return out


def even_columns(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)[..., ::2])


def odd_columns(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)[..., 1::2])


def mxfp4_transposed(
    blocks: np.ndarray, scales: np.ndarray, rows: slice = slice(None)
) -> np.ndarray:
    """MXFP4 experts ``[e, out, in]`` (packed along ``in``) -> our ``[e, in, out[rows]]``.

    Read and decoded expert by expert straight into the result, so memory is the result plus
    one expert per core; ``rows`` picks the gate (even) or up (odd) outputs of the fused
    projection. numpy releases the GIL in the lookups, so experts decode on every core.
    """
    if blocks.ndim != 4 or scales.ndim != 3:
        raise ValueError(f"expected MXFP4 experts [e, out, groups, 16], got {blocks.shape}")
    experts, out_rows = blocks.shape[0], len(range(*rows.indices(blocks.shape[1])))
    result = np.empty((experts, blocks.shape[2] * mxfp4.BLOCK, out_rows), dtype=ml_dtypes.bfloat16)

    def decode(e: int) -> None:
        mxfp4.dequantize_transposed(blocks[e][rows], scales[e][rows], result[e])

    with ThreadPoolExecutor(min(experts, threads.available())) as pool:
        list(pool.map(decode, range(experts)))  # list(): raise what a decode raised
    return result


EVEN, ODD = slice(0, None, 2), slice(1, None, 2)


@dataclass(frozen=True)
class TensorRule:
    """Read ``sources`` (checkpoint tensor names); each target is ``transform(*tensors)``."""

    sources: tuple[str, ...]
    targets: dict[tuple[str, ...], Transform]

    @classmethod
    def one(cls, name: str, targets: dict[tuple[str, ...], Transform]) -> TensorRule:
        return cls((name,), targets)


def _expert_rules(hf: str, mlp: tuple[str, ...], quantized: bool) -> list[TensorRule]:
    gate_up = {(*mlp, "gate_kernel"): even_columns, (*mlp, "up_kernel"): odd_columns}
    if not quantized:
        return [
            TensorRule.one(f"{hf}.gate_up_proj", gate_up),
            TensorRule.one(f"{hf}.down_proj", {(*mlp, "down_kernel"): same}),
        ]

    return [
        TensorRule(
            (f"{hf}.gate_up_proj_blocks", f"{hf}.gate_up_proj_scales"),
            {
                (*mlp, "gate_kernel"): lambda b, s: mxfp4_transposed(b, s, EVEN),
                (*mlp, "up_kernel"): lambda b, s: mxfp4_transposed(b, s, ODD),
            },
        ),
        TensorRule(
            (f"{hf}.down_proj_blocks", f"{hf}.down_proj_scales"),
            {(*mlp, "down_kernel"): mxfp4_transposed},
        ),
    ]


def tensor_rules(cfg: GptOssConfig, quantized: bool = False) -> list[TensorRule]:
    embedding_targets: dict[tuple[str, ...], Transform] = {("embedding",): same}
    if cfg.tie_word_embeddings:
        embedding_targets[("lm_head",)] = transpose
    rules = [
        TensorRule.one("model.embed_tokens.weight", embedding_targets),
        TensorRule.one("model.norm.weight", {("norm", "scale"): same}),
    ]
    if not cfg.tie_word_embeddings:
        rules.append(TensorRule.one("lm_head.weight", {("lm_head",): transpose}))
    for i in range(cfg.num_hidden_layers):
        hf = f"model.layers.{i}"
        ours = ("layers", str(i))
        attn = (*ours, "attention")
        mlp = (*ours, "mlp")
        rules += [
            TensorRule.one(f"{hf}.input_layernorm.weight", {(*ours, "input_norm", "scale"): same}),
            TensorRule.one(
                f"{hf}.post_attention_layernorm.weight",
                {(*ours, "post_attention_norm", "scale"): same},
            ),
            TensorRule.one(f"{hf}.self_attn.sinks", {(*attn, "sinks"): same}),
            TensorRule.one(f"{hf}.mlp.router.weight", {(*mlp, "router_kernel"): transpose}),
            TensorRule.one(f"{hf}.mlp.router.bias", {(*mlp, "router_bias"): same}),
            TensorRule.one(
                f"{hf}.mlp.experts.gate_up_proj_bias",
                {(*mlp, "gate_bias"): even_columns, (*mlp, "up_bias"): odd_columns},
            ),
            TensorRule.one(f"{hf}.mlp.experts.down_proj_bias", {(*mlp, "down_bias"): same}),
            *_expert_rules(f"{hf}.mlp.experts", mlp, quantized),
        ]
        for proj in "qkvo":
            rules += [
                TensorRule.one(
                    f"{hf}.self_attn.{proj}_proj.weight", {(*attn, f"{proj}_kernel"): transpose}
                ),
                TensorRule.one(f"{hf}.self_attn.{proj}_proj.bias", {(*attn, f"{proj}_bias"): same}),
            ]
    return rules
