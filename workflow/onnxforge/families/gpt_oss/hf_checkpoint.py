"""Hugging Face GptOss safetensors names -> our parameter paths.

Each rule reads its checkpoint tensors once and fills one or more parameters: the fused,
interleaved ``gate_up_proj`` (gate on even columns, up on odd) becomes two kernels. Expert
weights come plain (``gate_up_proj``, as transformers saves them) or MXFP4 (``*_blocks`` and
``*_scales``, as the hub's gpt-oss checkpoints ship them); MXFP4 experts are staged packed
(each kernel's blocks and scales, gate and up rows apart) and decoded when the stage loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxforge.core.params_store import packed_path
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


def expert_rows(x: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """``x[:, rows]`` of an experts-first tensor, read expert by expert (``x`` may be a
    StoredTensor): picks the gate (even) or up (odd) outputs of the fused projection's packed
    MXFP4 blocks or scales, bytes copied as they are."""
    if rows == slice(None):
        return np.asarray(x)
    out_rows = len(range(*rows.indices(x.shape[1])))
    out = np.empty((x.shape[0], out_rows, *x.shape[2:]), dtype=x.dtype)
    for e in range(x.shape[0]):
        out[e] = x[e][rows]
    return out


def mxfp4_packed(kernel: tuple[str, ...], rows: slice = slice(None)) -> dict:
    """The targets that stage expert ``kernel`` packed, from MXFP4 ``(blocks, scales)``
    ``[e, out, ...]``: its blocks and its scales (``rows`` of ``out``), decoded at load."""

    def part(x) -> np.ndarray:
        if x.dtype != np.uint8:
            raise ValueError(f"MXFP4 blocks and scales are uint8, not {x.dtype}")
        return expert_rows(x, rows)

    return {
        packed_path(kernel, mxfp4.FORMAT, "blocks"): lambda blocks, scales: part(blocks),
        packed_path(kernel, mxfp4.FORMAT, "scales"): lambda blocks, scales: part(scales),
    }


EVEN, ODD = slice(0, None, 2), slice(1, None, 2)
EXPERT_KERNELS = ("gate_kernel", "up_kernel", "down_kernel")


def packed_experts(shapes: dict[tuple[str, ...], tuple[int, ...]]) -> dict:
    """The staged shapes of an MXFP4 checkpoint (either layout): every expert kernel's place
    taken by its packed blocks and scales, as ``mxfp4_packed`` stages them."""
    staged = {}
    for path, shape in shapes.items():
        if path[-1] not in EXPERT_KERNELS:
            staged[path] = shape
            continue
        for part, part_shape in mxfp4.packed_shapes(shape).items():
            staged[packed_path(path, mxfp4.FORMAT, part)] = part_shape
    return staged


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
            {**mxfp4_packed((*mlp, "gate_kernel"), EVEN), **mxfp4_packed((*mlp, "up_kernel"), ODD)},
        ),
        TensorRule(
            (f"{hf}.down_proj_blocks", f"{hf}.down_proj_scales"),
            mxfp4_packed((*mlp, "down_kernel")),
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
