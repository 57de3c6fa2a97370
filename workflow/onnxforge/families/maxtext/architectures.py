"""The Hugging Face architectures the maxtext family reads, and how each maps onto MaxText.

Pure Python (no MaxText import): the catalog and the Snakefile use it in the ``jax``
environment too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from onnxforge.core.errors import InputError
from onnxforge.families.gpt_oss.synthetic import TINY as GPT_OSS_TINY
from onnxforge.families.maxtext import convert
from onnxforge.families.maxtext.overrides import LLAMA3_ROPE_SCALING

# The decoder's unscanned layers: ``layers_N``; DeepSeek's ``dense_layers_N`` then
# ``moe_layers_N``.
LAYER_NAME = re.compile(r"(?:(dense|moe)_)?layers_(\d+)")


def decoder_layers(names) -> list[str]:
    """The decoder's layer modules among ``names``, in the order they run."""
    found = [(m, name) for name in names if (m := LAYER_NAME.fullmatch(name))]
    return [name for m, name in sorted(found, key=lambda f: (f[0][1] == "moe", int(f[0][2])))]


@dataclass(frozen=True)
class Architecture:
    model_type: str  # its name (tiny-<name>); config.json's model_type unless hf_model_types
    transformers_class: str  # the reference, and the writer of tiny checkpoints
    config_class: str
    default_model: str  # MaxText's configs/models/<name>.yml
    converter: convert.Converter  # MaxText's converter that stages it
    tiny: dict[str, Any] = field(default_factory=dict)  # a tiny config for tests
    extra_overrides: dict[str, Any] = field(default_factory=dict)
    # What `onnxforge build SOURCE` recognizes as this architecture (``recognize``): the
    # config.json model_types, and the RoPE scalings (``rope_type``; "default": none) whose
    # frequencies default_model reproduces (Llama 2's plain RoPE, not Llama 3's "llama3").
    hf_model_types: tuple[str, ...] = ()
    hf_rope_types: tuple[str, ...] = ("default",)
    # The Hugging Face layers one MaxText layer holds, in order, by its modules' name suffix
    # (Gemma 2: a local-attention layer, then a global one); "" where it holds one.
    sublayers: tuple[str, ...] = ("",)
    # The other family's example whose tiny checkpoint this one's is (crosschecked with it).
    same_checkpoint_as: str = ""
    # Where MaxText's router applies its score function inside the gate (DeepSeek's
    # routed_score_func), its router tap holds scores: the reference's logits are compared
    # through the same function ("softmax").
    router_scores: str = ""
    # Named changes to ``tiny`` that make more tiny examples of this architecture (tiny-<name>):
    # another release of it (Llama 3.2 as Llama 3.1 with RoPE factor 32).
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def maxtext_layer(self, hf_layer: int, layers: list[str]) -> tuple[str, str]:
        """Where Hugging Face's layer ``hf_layer`` is: MaxText's layer module (of the decoder's
        ``layers``, in order: ``decoder_layers``), module suffix."""
        block, within = divmod(hf_layer, len(self.sublayers))
        return layers[block], self.sublayers[within]

    @property
    def converts(self) -> tuple[str, ...]:
        return self.hf_model_types or (self.model_type,)

    @property
    def moe(self) -> bool:
        """A mixture of experts (transformers names the expert count per model)."""
        keys = ("num_local_experts", "num_experts", "n_routed_experts")
        return any(self.tiny.get(key) for key in keys)

    @property
    def series(self) -> str:
        """The MaxText models it covers: ``llama3.1`` for llama3.1-8b, -70b, -405b."""
        return self.default_model.rsplit("-", 1)[0]


_TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}

# DeepSeek-V2-Lite's shape at a tiny size: no query LoRA, one dense layer first, MLA, MoE with a
# shared expert, and its YaRN (MaxText's deepseek2-16b.yml: the same numbers).
_DEEPSEEK_TINY = {
    **_TINY,
    "num_key_value_heads": 4,
    "head_dim": 8,  # = qk_rope_head_dim, as transformers has it
    "moe_intermediate_size": 32,
    "first_k_dense_replace": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    # DeepSeek-V2-Lite's YaRN (MaxText's deepseek2-16b.yml: the same numbers)
    "max_position_embeddings": 163840,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
    },
}

# DeepSeek V3's routing at a tiny size: query LoRA, sigmoid scores plus the correction bias
# (noaux_tc), the best of 2 expert groups searched, renormalized top-2 scaled by 2.5; and its
# YaRN (MaxText's deepseek3-671b.yml: mscale 1).
_DEEPSEEK_V3_TINY = {
    **_DEEPSEEK_TINY,
    "q_lora_rank": 16,
    "n_routed_experts": 8,
    "n_group": 2,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "rope_parameters": {
        **_DEEPSEEK_TINY["rope_parameters"],
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}

ARCHITECTURES = {
    a.model_type: a
    for a in (
        Architecture(
            "llama",
            "LlamaForCausalLM",
            "LlamaConfig",
            "llama2-7b",
            convert.convert_llama_like,
            {**_TINY, "num_key_value_heads": 4},  # llama2-7b: one kv head per query head
            hf_model_types=("llama",),
        ),
        Architecture(
            "mistral",
            "MistralForCausalLM",
            "MistralConfig",
            "mistral-7b",
            convert.convert_llama_like,
            {**_TINY, "sliding_window": 8},  # shorter than parity's long input: it is tested
            hf_model_types=("mistral",),
        ),
        Architecture(
            "mixtral",
            "MixtralForCausalLM",
            "MixtralConfig",
            "mixtral-8x7b",
            # llama_or_mistral_ckpt's safetensors path cannot read experts (it maps every
            # tensor with expert index -1); to_maxtext's Mixtral mapping can.
            convert.with_to_maxtext("mixtral-8x7b"),
            {**_TINY, "intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
            hf_model_types=("mixtral",),
        ),
        Architecture(
            "gemma",
            "GemmaForCausalLM",
            "GemmaConfig",
            "gemma-2b",
            convert.convert_gemma,
            {**_TINY, "num_key_value_heads": 1, "tie_word_embeddings": True},
            hf_model_types=("gemma",),
        ),
        # MaxText 0.2.5's general converter, checkpoint_conversion.to_maxtext, for the rest.
        Architecture(
            "llama3.1",
            "LlamaForCausalLM",
            "LlamaConfig",
            "llama3.1-8b",
            convert.with_to_maxtext("llama3.1-8b"),
            {**_TINY, "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE_SCALING},
            hf_model_types=("llama",),
            hf_rope_types=("llama3",),
            # Llama 3.2 (1B, 3B): the same layers, RoPE factor 32 (runtime.py's patch)
            variants={"llama3.2": {"rope_scaling": {**LLAMA3_ROPE_SCALING, "factor": 32.0}}},
        ),
        Architecture(
            "qwen3",
            "Qwen3ForCausalLM",
            "Qwen3Config",
            "qwen3-8b",
            convert.with_to_maxtext("qwen3-8b"),
            {**_TINY, "rope_theta": 1000000.0},
            hf_model_types=("qwen3",),
        ),
        Architecture(
            "qwen3_moe",
            "Qwen3MoeForCausalLM",
            "Qwen3MoeConfig",
            "qwen3-30b-a3b",
            convert.with_to_maxtext("qwen3-30b-a3b"),
            {
                **_TINY,
                "moe_intermediate_size": 32,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "norm_topk_prob": True,
                "rope_theta": 1000000.0,
            },
            hf_model_types=("qwen3_moe",),
        ),
        Architecture(
            "gemma2",
            "Gemma2ForCausalLM",
            "Gemma2Config",
            "gemma2-9b",
            convert.with_to_maxtext("gemma2-9b"),
            {
                **_TINY,
                "num_hidden_layers": 4,  # two MaxText layers, each a (local, global) pair
                "tie_word_embeddings": True,
                "query_pre_attn_scalar": 16,  # = head_dim, as gemma-2-2b and -9b have it
                "sliding_window": 8,  # shorter than parity's long input: the window is tested
                "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0,
            },
            hf_model_types=("gemma2",),
            sublayers=("_local", "_global"),
        ),
        # The text-only layout (Gemma3ForCausalLM: google/gemma-3-1b-pt, fine-tunes), through
        # MaxText's multimodal Gemma 3 mapping (convert.py, text_only).
        Architecture(
            "gemma3",
            "Gemma3ForCausalLM",
            "Gemma3TextConfig",
            "gemma3-4b",
            convert.with_to_maxtext("gemma3-4b", text_only=True),
            {
                **_TINY,
                "num_hidden_layers": 6,  # five local layers, then a global one: both tested
                "tie_word_embeddings": True,
                "query_pre_attn_scalar": 16,  # = head_dim, as gemma-3-1b and -4b have it
                "sliding_window": 8,  # shorter than parity's long input: the window is tested
                "rope_parameters": {
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {
                        "rope_type": "linear",
                        "factor": 8.0,
                        "rope_theta": 1000000.0,
                    },
                },
            },
            hf_model_types=("gemma3_text",),
            hf_rope_types=("default", "linear"),
        ),
        # DeepSeek V2 (V2-Lite's shape: no query LoRA, one dense layer first), MLA + MoE with
        # shared experts.
        Architecture(
            "deepseek_v2",
            "DeepseekV2ForCausalLM",
            "DeepseekV2Config",
            "deepseek2-16b",
            convert.with_to_maxtext("deepseek2-16b"),
            _DEEPSEEK_TINY,
            hf_model_types=("deepseek_v2",),
            hf_rope_types=("yarn",),
            router_scores="softmax",
        ),
        # DeepSeek V3: V2's layers with query LoRA and group-limited sigmoid routing with a
        # correction bias (convert.py stages the bias MaxText's mapping misnames).
        Architecture(
            "deepseek_v3",
            "DeepseekV3ForCausalLM",
            "DeepseekV3Config",
            "deepseek3-671b",
            convert.with_to_maxtext("deepseek3-671b"),
            _DEEPSEEK_V3_TINY,
            hf_model_types=("deepseek_v3",),
            hf_rope_types=("yarn",),
            router_scores="sigmoid",
        ),
        # The gpt_oss family's own tiny checkpoint (synthetic.py delegates to its writer: the
        # same bytes as tiny-gpt-oss), through MaxText's GPT-OSS: a second implementation.
        Architecture(
            "gpt_oss",
            "GptOssForCausalLM",
            "GptOssConfig",
            "gpt-oss-20b",
            convert.with_to_maxtext("gpt-oss-20b"),
            GPT_OSS_TINY,
            # `onnxforge build` gives gpt_oss configs to the gpt_oss family (registry order);
            # --family maxtext picks this one.
            hf_model_types=("gpt_oss",),
            hf_rope_types=("yarn",),
            same_checkpoint_as="tiny-gpt-oss",
        ),
    )
}


def architecture(
    hf_config: dict[str, Any], source: str, model_name: str | None = None
) -> Architecture:
    """The architecture that converts ``hf_config``'s model_type; where several do (Llama 2
    and Llama 3.1 are both ``llama``), the one whose MaxText models ``model_name`` (the
    catalog's ``options.model``) belongs to, else the first."""
    model_type = hf_config.get("model_type")
    candidates = [a for a in ARCHITECTURES.values() if model_type in a.converts]
    if not candidates:
        known = sorted({t for a in ARCHITECTURES.values() for t in a.converts})
        raise InputError(
            f"{source}: model_type {model_type!r} is not one the maxtext family stages; "
            f"known: {known}"
        )
    if model_name:
        for arch in candidates:
            if model_name == arch.default_model or model_name.startswith(arch.series + "-"):
                return arch
    return candidates[0]


def rope_type(hf_config: dict[str, Any]) -> str:
    """config.json's RoPE scaling (``rope_scaling``, or transformers 5's ``rope_parameters``),
    "default" where it has none."""
    scaling = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def recognize(hf_config: dict[str, Any], source: str) -> Architecture | None:
    """The one architecture whose ``hf_model_types`` and ``hf_rope_types`` fit config.json;
    None when no entry names its model_type; an error naming the candidates when its RoPE
    scaling fits none of them, or several."""
    model_type = hf_config.get("model_type")
    candidates = [a for a in ARCHITECTURES.values() if model_type in a.hf_model_types]
    if not candidates:
        return None
    rope = rope_type(hf_config)
    fitting = [a for a in candidates if rope in a.hf_rope_types]
    if len(fitting) == 1:
        return fitting[0]
    offered = ", ".join(f"{a.default_model} (rope {'/'.join(a.hf_rope_types)})" for a in candidates)
    problem = "none of" if not fitting else "several of"
    raise InputError(
        f"{source}: model_type {model_type!r} with rope_type {rope!r} fits {problem} MaxText's "
        f"{offered}; choose one with --maxtext-model NAME (configs/models/NAME.yml)"
    )
