"""GPT-OSS hyperparameters, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from onnxforge.errors import InputError


@dataclasses.dataclass(frozen=True)
class GptOssConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float = 1e-5
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    rope_theta: float = 150000.0
    rope_type: str = "yarn"
    rope_factor: float = 32.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_max_position_embeddings: int = 4096
    rope_truncate: bool = False
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, source: str = "config.json") -> GptOssConfig:
        """Build from the dict of a Hugging Face GptOss ``config.json``."""
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "num_local_experts",
            "num_experts_per_tok",
        )
        missing = [key for key in required if key not in hf]
        if missing:
            raise InputError(
                f"{source}: missing key(s) {missing} needed for a GPT-OSS model; "
                "is this a GptOss config.json?"
            )
        n_layers = int(hf["num_hidden_layers"])
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
        ]
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(hf["num_attention_heads"]),
            num_key_value_heads=int(hf["num_key_value_heads"]),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
            num_local_experts=int(hf["num_local_experts"]),
            num_experts_per_tok=int(hf["num_experts_per_tok"]),
            sliding_window=int(hf.get("sliding_window") or 0),
            layer_types=tuple(layer_types[:n_layers]),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)),
            swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 150000.0))),
            rope_type=str(rope.get("rope_type", "yarn")),
            rope_factor=float(rope.get("factor", 32.0)),
            rope_beta_fast=float(rope.get("beta_fast", 32.0)),
            rope_beta_slow=float(rope.get("beta_slow", 1.0)),
            rope_original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", 4096)
            ),
            rope_truncate=bool(rope.get("truncate", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def rotary_inverse_frequencies(self) -> tuple[np.ndarray, float]:
        """Inverse frequencies and cos/sin scale: plain RoPE, or YaRN as GPT-OSS uses it."""
        dim = self.head_dim
        base = self.rope_theta
        pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
        if self.rope_type == "default":
            return (1.0 / pos_freqs).astype(np.float32), 1.0
        if self.rope_type != "yarn":
            raise InputError(f"config.json: rope_type {self.rope_type!r} is not supported")
        factor = self.rope_factor
        scale = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0

        def correction_dim(rotations: float) -> float:
            ratio = self.rope_original_max_position_embeddings / (rotations * 2 * math.pi)
            return dim * math.log(ratio) / (2 * math.log(base))

        low = correction_dim(self.rope_beta_fast)
        high = correction_dim(self.rope_beta_slow)
        if self.rope_truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation = 1.0 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (
            1.0 / pos_freqs
        ) * extrapolation
        return inv_freq.astype(np.float32), float(scale)
