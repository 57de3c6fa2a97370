"""GPT-OSS hyperparameters, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from onnxforge.core.errors import InputError
from onnxforge.core.hf_config import config_number


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
        if hf.get("model_type", "gpt_oss") != "gpt_oss":
            raise InputError(
                f"{source}: model_type is {hf['model_type']!r}, not 'gpt_oss': this checkpoint "
                "is not a GPT-OSS model; give it to the family its model_type names"
            )
        missing = [key for key in required if key not in hf]
        if missing:
            raise InputError(
                f"{source}: missing key(s) {missing} needed for a GPT-OSS model; "
                "is this a GptOss config.json?"
            )

        def number(
            key: str,
            kind=int,
            default: Any = None,
            minimum: float | None = 1,
            table: dict[str, Any] = hf,
            above: float | None = None,
        ):
            value = table.get(key)
            value = default if value is None else value
            if value is None and key not in required:
                return None
            if table is not hf:
                key = f"{rope_key}.{key}"
            return config_number(value, key, source, kind, minimum, above)

        n_layers = number("num_hidden_layers")
        heads = number("num_attention_heads")
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
        ]
        if not isinstance(layer_types, list) or len(layer_types) < n_layers:
            count = len(layer_types) if isinstance(layer_types, list) else 0
            raise InputError(
                f"{source}: layer_types has {count} entries for num_hidden_layers {n_layers}; "
                "expected one per layer"
            )
        unknown = sorted(set(layer_types[:n_layers]) - {"sliding_attention", "full_attention"})
        if unknown:
            raise InputError(
                f"{source}: layer_types has {unknown}; expected sliding_attention or full_attention"
            )
        rope_key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
        rope = hf.get(rope_key) or {}
        if not isinstance(rope, dict):
            raise InputError(f"{source}: {rope_key} is {rope!r}; expected an object")
        hidden = number("hidden_size")
        experts = number("num_local_experts")
        per_token = number("num_experts_per_tok")
        if per_token > experts:
            raise InputError(
                f"{source}: num_experts_per_tok is {per_token}; expected 1 to "
                f"num_local_experts ({experts}): each token picks that many of the experts. "
                "Fix config.json"
            )
        has_sliding = "sliding_attention" in layer_types[:n_layers]
        window = number("sliding_window", minimum=1 if has_sliding else 0)
        # YaRN's and RoPE's numbers: a zero base or factor is a log of zero further on
        theta_table = rope if "rope_theta" in rope else hf
        return cls(
            vocab_size=number("vocab_size"),
            hidden_size=hidden,
            intermediate_size=number("intermediate_size"),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=number("num_key_value_heads"),
            head_dim=number("head_dim") or hidden // heads,
            num_local_experts=experts,
            num_experts_per_tok=per_token,
            sliding_window=window or 0,
            layer_types=tuple(layer_types[:n_layers]),
            rms_norm_eps=number("rms_norm_eps", float, 1e-5, minimum=0),
            swiglu_alpha=number("swiglu_alpha", float, 1.702, minimum=None),
            swiglu_limit=number("swiglu_limit", float, 7.0, minimum=None),
            rope_theta=number("rope_theta", float, 150000.0, None, theta_table, above=0),
            rope_type=str(rope.get("rope_type", "yarn")),
            rope_factor=number("factor", float, 32.0, None, rope, above=0),
            rope_beta_fast=number("beta_fast", float, 32.0, None, rope, above=0),
            rope_beta_slow=number("beta_slow", float, 1.0, None, rope, above=0),
            rope_original_max_position_embeddings=number(
                "original_max_position_embeddings", int, 4096, 1, rope
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
