"""What every architecture file declares (``Architecture``), and the readings of config.json
they share: RoPE with one precedence, the attention window, the settings every MaxText model
takes, and the refusals most architectures make.

Pure Python (no MaxText import): the catalog and the Snakefile use it in the ``jax``
environment too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxforge.core.errors import InputError
from onnxforge.core.hf_config import config_number
from onnxforge.families.maxtext import convert

HfConfig = dict[str, Any]

# ONNX Runtime GenAI's ``model.type`` for an architecture it has no type of its own for: the
# type only selects GenAI's driver for a decoder-only graph (our graph does the model's math),
# and its "llama" driver runs ours; the generation tests check GenAI's tokens against the gate's.
GENAI_DECODER_ONLY = "llama"

# The widths and counts the architectures' tiny test checkpoints share (each changes what its
# published model needs, e.g. a head_dim apart from hidden / heads); every other field is the
# published model's (fixtures.small).
SMALL = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
# A head_dim apart from hidden_size / num_attention_heads (64 / 4), for the models that publish
# one (Gemma 2 9B: 256 over 3584 / 16; Qwen3-30B-A3B: 128 over 2048 / 32; GPT-OSS: 64 over 45).
APART_HEAD_DIM = 32

# The decoder's unscanned layers: ``layers_N``; DeepSeek's ``dense_layers_N`` then
# ``moe_layers_N``.
LAYER_NAME = re.compile(r"(?:(dense|moe)_)?layers_(\d+)")


def decoder_layers(names) -> list[str]:
    """The decoder's layer modules among ``names``, in the order they run."""
    found = [(m, name) for name in names if (m := LAYER_NAME.fullmatch(name))]
    return [name for m, name in sorted(found, key=lambda f: (f[0][1] == "moe", int(f[0][2])))]


# RoPE. Before transformers 5 config.json keeps its scaling as ``rope_scaling`` (``type`` in
# older files, ``rope_type`` since); transformers 5 writes ``rope_parameters``, which also
# holds ``rope_theta``. Where a file has both, it reads them as transformers (5.23) does: the
# legacy rope_scaling wins key by key, its ``type`` naming the scaling (a rope_parameters of
# type default beside rope_scaling {type: linear, factor: 4} is linear, factor 4).


def rope_parameters(hf_config: HfConfig) -> dict[str, Any]:
    """config.json's RoPE settings, ``rope_parameters`` overlaid with ``rope_scaling``."""
    legacy = dict(hf_config.get("rope_scaling") or {})
    if "type" in legacy and "rope_type" not in legacy:
        legacy["rope_type"] = legacy["type"]
    return {**(hf_config.get("rope_parameters") or {}), **legacy}


def scaling_type(parameters: dict[str, Any]) -> str:
    """The RoPE scaling one set of parameters names (``rope_type``, else the older ``type``);
    "default" where it names none."""
    return str(parameters.get("rope_type") or parameters.get("type") or "default")


def rope_type(hf_config: HfConfig) -> str:
    """config.json's RoPE scaling; "default" where it has none."""
    return scaling_type(rope_parameters(hf_config))


def rope_theta(hf_config: HfConfig) -> float:
    return float(rope_parameters(hf_config).get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def sliding_window(hf_config: HfConfig) -> int | None:
    """The attention window config.json sets, or None (Qwen's is off unless
    ``use_sliding_window``)."""
    window = hf_config.get("sliding_window")
    if hf_config.get("use_sliding_window") is False:
        return None
    return int(window) if window else None


# The config.json numbers every architecture reads (check_numbers), and those some have.
REQUIRED_NUMBERS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
OPTIONAL_NUMBERS = (
    "num_key_value_heads",
    "head_dim",
    "num_local_experts",
    "n_routed_experts",
    "moe_intermediate_size",
)


def check_numbers(hf_config: HfConfig, source: str) -> None:
    """The numbers of config.json that the architectures read, each refused in one line naming
    it where it is not a number, or out of range (before MaxText's converter trips on it)."""
    missing = [key for key in REQUIRED_NUMBERS if key not in hf_config]
    if missing:
        raise InputError(
            f"{source}: missing key(s) {missing}; expected a Hugging Face config.json of a "
            "decoder-only model"
        )
    for key in REQUIRED_NUMBERS + OPTIONAL_NUMBERS:
        if hf_config.get(key) is not None:
            config_number(hf_config[key], key, source)
    if hf_config.get("rms_norm_eps") is not None:
        config_number(hf_config["rms_norm_eps"], "rms_norm_eps", source, float, minimum=0)
    if hf_config.get("sliding_window") is not None:
        config_number(hf_config["sliding_window"], "sliding_window", source)
    parameters = rope_parameters(hf_config)
    for key, table, where in (
        ("rope_theta", parameters, "rope_parameters.rope_theta"),
        ("rope_theta", hf_config, "rope_theta"),
        ("factor", parameters, "rope_scaling.factor"),
    ):
        if isinstance(table.get(key), int | float | str | bool):
            config_number(table[key], where, source, float, minimum=None, above=0)
    experts = hf_config.get("num_local_experts") or hf_config.get("n_routed_experts")
    per_token = hf_config.get("num_experts_per_tok")
    picked = per_token is not None and config_number(per_token, "num_experts_per_tok", source)
    if experts and picked and picked > experts:
        raise InputError(
            f"{source}: num_experts_per_tok is {per_token}; expected 1 to the number of "
            f"experts ({experts}): each token picks that many of them. Fix config.json"
        )


def common_overrides(hf_config: HfConfig) -> dict[str, Any]:
    """The MaxText settings every architecture takes from config.json: the dimensions, so tiny
    and layer-truncated checkpoints build the model their weights need (published sizes agree
    with MaxText's own yml)."""
    heads = hf_config["num_attention_heads"]
    return {
        "base_emb_dim": hf_config["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf_config.get("num_key_value_heads", heads),
        "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        "base_mlp_dim": hf_config["intermediate_size"],
        "base_num_decoder_layers": hf_config["num_hidden_layers"],
        "vocab_size": hf_config["vocab_size"],
        "normalization_layer_epsilon": hf_config.get("rms_norm_eps", 1e-6),
        "rope_max_timescale": rope_theta(hf_config),
        **tied_head(hf_config),
    }


# Gemma's converters scale the embedding table by sqrt(emb_dim) (its input normalizer), so its
# tied logits are divided by it again: MaxText's default, normalize_embedding_logits. Every
# other tied head is the table itself (Qwen3's MaxText configs set it false).
GEMMA_TIED_HEAD = {"normalize_embedding_logits": True}


def tied_head(hf_config: HfConfig) -> dict[str, Any]:
    """The logits through the embedding table where config.json ties them (Llama 3.2, small
    Qwen3 and Gemma), unscaled: a Gemma architecture adds GEMMA_TIED_HEAD over this."""
    if not hf_config.get("tie_word_embeddings", False):
        return {"logits_via_embedding": False}
    return {"logits_via_embedding": True, "normalize_embedding_logits": False}


def local_experts(hf_config: HfConfig) -> dict[str, Any]:
    """The MoE settings of a config.json that counts its experts as ``num_local_experts``
    (Mixtral, GPT-OSS), every layer's experts as wide as ``intermediate_size``."""
    if not hf_config.get("num_local_experts"):
        return {}
    return {
        "num_experts": hf_config["num_local_experts"],
        "num_experts_per_tok": hf_config["num_experts_per_tok"],
        "base_moe_mlp_dim": hf_config["intermediate_size"],
    }


# Refusals: config.json fields MaxText's model cannot honor, each with why (stage refuses the
# checkpoint rather than fail parity on numbers alone).


def refuse_all_but_default_rope_and_global_attention(
    hf_config: HfConfig, model_name: str
) -> list[str]:
    """The refusals of a model with plain RoPE, global attention and no biases (Gemma, Qwen3,
    Qwen3 MoE): any RoPE scaling, any sliding window, any bias."""
    return (
        refuse_rope(hf_config, model_name)
        + refuse_window(hf_config, model_name)
        + refuse_biases(hf_config, model_name)
    )


def refuse_rope(hf_config: HfConfig, model_name: str, honored=("default",)) -> list[str]:
    kind = rope_type(hf_config)
    if kind in honored:
        return []
    return [f"rope_scaling type {kind!r}: MaxText's {model_name} has no such RoPE"]


def refuse_window(hf_config: HfConfig, model_name: str) -> list[str]:
    """For MaxText models whose layers all attend globally."""
    window = sliding_window(hf_config)
    if not window:
        return []
    return [f"sliding_window {window}: MaxText's {model_name} attends globally in every layer"]


def llama_or_mistral_ckpt_refusals(hf_config: HfConfig, model_name: str) -> list[str]:
    """For checkpoints MaxText's llama_or_mistral_ckpt converter stages: it lays every attention
    kernel out as hidden_size = num_attention_heads x head_dim, which a config.json that sets
    head_dim apart (Mistral-Nemo: 32 heads of 128 over hidden 5120) breaks, and reads an LM
    head of its own (output.weight), which tied embeddings do not have."""
    reasons = []
    heads, hidden = hf_config["num_attention_heads"], hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim")
    if head_dim and head_dim * heads != hidden:
        reasons.append(
            f"head_dim {head_dim}: MaxText's converter for {model_name} (llama_or_mistral_ckpt) "
            f"needs num_attention_heads x head_dim = hidden_size ({heads} x {head_dim} != {hidden})"
        )
    if hf_config.get("tie_word_embeddings"):
        reasons.append(
            f"tie_word_embeddings true: MaxText's converter for {model_name} "
            "(llama_or_mistral_ckpt) reads an LM head of its own (lm_head.weight), which a "
            "checkpoint with tied embeddings does not have"
        )
    return reasons


def refuse_biases(hf_config: HfConfig, model_name: str) -> list[str]:
    """For MaxText models whose projections have no biases."""
    return [
        f"{flag}: MaxText's {model_name} has no such biases"
        for flag in ("attention_bias", "mlp_bias")
        if hf_config.get(flag)
    ]


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """One Hugging Face architecture as MaxText builds it: everything the family knows about
    it (one file each in this package)."""

    model_type: str  # its name (tiny-<name>); config.json's model_type unless hf_model_types
    transformers_class: str  # the reference, and the writer of tiny checkpoints
    config_class: str
    default_model: str  # MaxText's configs/models/<name>.yml
    converter: convert.Converter  # MaxText's converter that stages it
    # ONNX Runtime GenAI's ``model.type`` for its KV-cache export (genai_config.json); None
    # where GenAI cannot run it, which the GenAI folder writer refuses. Always explicit.
    genai_type: str | None
    # The MaxText settings it adds to ``common_overrides`` for a config.json.
    settings: Callable[[HfConfig], dict[str, Any]]
    # ``(config.json, MaxText model name) -> reasons``: the fields that model cannot honor.
    refusals: Callable[[HfConfig, str], list[str]]
    # The tiny test config: default_model's published config.json, small (fixtures.small).
    tiny: dict[str, Any] = field(default_factory=dict)
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
    # (config.json's key, the MLP activation MaxText's model computes): another value is
    # refused (MaxText would keep its own, silently); None where the layers have their own
    # (GPT-OSS's clamped SwiGLU).
    activation: tuple[str, str] | None = ("hidden_act", "silu")
    # Values of that key that transformers reads as another (Gemma's published "gelu": its
    # config class reads the tanh approximation, a legacy of the first releases).
    activation_aliases: dict[str, str] = field(default_factory=dict)
    # Where MaxText's layers fix their RMSNorm epsilon rather than read the config (Gemma's
    # 1e-6), and where its model always ties the LM head to the embedding (Gemma): another
    # config.json is refused (found by tests/support/mutations.py).
    fixed_norm_epsilon: float | None = None
    always_tied: bool = False
    # Why its KV-cache decoder cannot be exported (empty: it can): the export of a KV variant
    # is refused in this one line, before anything is traced.
    kv_refusal: str = ""
    # Its tiny example is also built quantized (families.base.QUANTIZED_VARIANTS), with a
    # trained twin: one dense architecture and one MoE stand for the rest in CI.
    quantized: bool = False
    # More tiny examples of this architecture (tiny-<name>), each another published release of
    # it, small (Llama 3.2 1B: Llama 3.1's layers with RoPE factor 32 and tied embeddings).
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def maxtext_overrides(self, hf_config: HfConfig) -> dict[str, Any]:
        """MaxText settings that make its model match this checkpoint's config.json."""
        return {**common_overrides(hf_config), **self.settings(hf_config)}

    def unsupported(self, hf_config: HfConfig, model_name: str) -> list[str]:
        """The config.json fields MaxText's ``model_name`` cannot honor, each with why."""
        reasons = self.refusals(hf_config, model_name)
        if self.activation is not None:  # MaxText's model keeps its own: refused, not ignored
            key, computed = self.activation
            value = hf_config.get(key) or hf_config.get("hidden_act")
            value = self.activation_aliases.get(value, value)
            if value is not None and value != computed:
                reasons.append(f"{key} {value!r}: MaxText's {model_name} computes {computed!r}")
        eps = hf_config.get("rms_norm_eps")
        if self.fixed_norm_epsilon is not None and eps not in (None, self.fixed_norm_epsilon):
            reasons.append(
                f"rms_norm_eps {eps}: MaxText's {model_name} normalizes its layers with epsilon "
                f"{self.fixed_norm_epsilon}, whatever the config says"
            )
        if self.always_tied and hf_config.get("tie_word_embeddings") is False:
            reasons.append(
                f"tie_word_embeddings false: MaxText's {model_name} reads its logits through the "
                "embedding table; it has no LM head of its own"
            )
        return reasons

    def convert(self, checkpoint_dir: Path, hf_config: HfConfig) -> dict[str, Any]:
        """MaxText's parameters of the checkpoint, by its converter (given MaxText's settings
        for config.json: to_maxtext builds the model it maps onto from them)."""
        return self.converter(checkpoint_dir, hf_config, self.maxtext_overrides(hf_config))

    def maxtext_layer(self, hf_layer: int, layers: list[str]) -> tuple[str, str]:
        """Where Hugging Face's layer ``hf_layer`` is: MaxText's layer module (of the decoder's
        ``layers``, in order: ``decoder_layers``), module suffix."""
        block, within = divmod(hf_layer, len(self.sublayers))
        return layers[block], self.sublayers[within]

    @property
    def export_variants(self) -> tuple[str, ...]:
        """The config variants its tiny examples are built in by default, and so tested in (the
        registry build): the full-sequence one, and both KV decoders unless refused."""
        return ("f32",) if self.kv_refusal else ("f32", "f32-kv", "f32-kv-plain")

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
