"""The config.json fields that change a model's math, each mutated in a tiny checkpoint that
transformers writes with it: the maxtext family must honour it (its JAX logits equal those
of transformers run on the same files) or refuse it at stage in one line naming the field.
A field that passes stage and then differs is "caught" only by the parity gate: a mistake in
the family, which the test fails on, with the error it measured.

Run in the family's environment, every mutation of it in one process (MaxText imported once):

    .venv-maxtext/bin/python tests/support/mutations.py OUT.json maxtext [NAME ...]
    .venv/bin/python tests/support/mutations.py OUT.json gpt_oss [NAME ...]

``tests/dag/test_mutations.py`` runs it and prints the table; ``MUTATIONS`` is the list.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HONOURED, REFUSED, CAUGHT = "honoured", "refused", "caught by the gate only"
TOLERANCE = 1e-4  # float32, tiny models: honest errors are ~1e-6 (README: gates)


@dataclass(frozen=True)
class Mutation:
    arch: str  # families/maxtext/architectures: its tiny config is the baseline
    field: str  # the config.json field that changes (named in a refusal)
    changes: dict[str, Any]  # what the tiny config gets
    family: str = "maxtext"  # who stages it (gpt_oss: our Flax GPT-OSS, on arch gpt_oss's)

    @property
    def name(self) -> str:
        return f"{self.family}:{self.arch}-{self.field}"


def _rope(arch: str, key: str, **changes) -> dict:
    """{key: the architecture's tiny RoPE table (as published: ``rope_scaling``) with
    ``changes``}."""
    from onnxforge.families.maxtext.architectures import ARCHITECTURES

    return {key: {**copy.deepcopy(ARCHITECTURES[arch].tiny[key]), **changes}}


GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
}
LOCAL_50K = {"rope_type": "default", "rope_theta": 50000.0}

MUTATIONS = [
    # RoPE: base, type, factor and sub-fields
    Mutation("llama", "rope_theta", {"rope_theta": 500000.0}),
    Mutation(
        "llama", "rope_scaling.linear", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    ),
    Mutation(
        "llama", "rope_scaling.dynamic", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    ),
    Mutation(
        "llama3.1",
        "rope_scaling.factor",
        _rope("llama3.1", "rope_scaling", factor=16.0, original_max_position_embeddings=64),
    ),
    Mutation(
        "llama3.1",
        "rope_scaling.high_freq_factor",
        _rope(
            "llama3.1", "rope_scaling", high_freq_factor=2.0, original_max_position_embeddings=64
        ),
    ),
    # norms, widths, heads
    Mutation("llama", "rms_norm_eps", {"rms_norm_eps": 0.5}),
    Mutation("llama", "num_key_value_heads", {"num_key_value_heads": 2}),
    Mutation("llama", "head_dim", {"head_dim": 32}),
    # biases and tied embeddings
    Mutation("llama", "attention_bias", {"attention_bias": True}),
    Mutation("llama", "mlp_bias", {"mlp_bias": True}),
    Mutation("llama", "tie_word_embeddings", {"tie_word_embeddings": True}),
    # activation
    Mutation("llama", "hidden_act", {"hidden_act": "gelu_pytorch_tanh"}),
    # windows
    Mutation("mistral", "sliding_window", {"sliding_window": 4}),
    Mutation("llama", "sliding_window", {"sliding_window": 4}),
    Mutation("qwen3", "sliding_window", {"use_sliding_window": True, "sliding_window": 4}),
    # soft caps and scalars (Gemma 2)
    Mutation("gemma2", "final_logit_softcapping", {"final_logit_softcapping": 3.0}),
    Mutation("gemma2", "attn_logit_softcapping", {"attn_logit_softcapping": 2.0}),
    Mutation("gemma2", "query_pre_attn_scalar", {"query_pre_attn_scalar": 64}),
    # routing
    Mutation("mixtral", "num_experts_per_tok", {"num_experts_per_tok": 1}),
    Mutation("qwen3_moe", "norm_topk_prob", {"norm_topk_prob": False}),
    Mutation("qwen3", "rope_theta", {"rope_theta": 10000.0}),
    Mutation("qwen3", "rms_norm_eps", {"rms_norm_eps": 0.5}),
    # Gemma: its head width apart from hidden / heads, eps, an untied head
    Mutation("gemma", "head_dim", {"head_dim": 32}),
    Mutation("gemma", "rms_norm_eps", {"rms_norm_eps": 0.5}),
    Mutation("gemma", "tie_word_embeddings", {"tie_word_embeddings": False}),
    Mutation("gemma2", "sliding_window", {"sliding_window": 4}),
    Mutation("gemma2", "rms_norm_eps", {"rms_norm_eps": 0.5}),
    Mutation("gemma3", "rms_norm_eps", {"rms_norm_eps": 0.5}),
    # Gemma 3: its window, both RoPEs, its query scalar
    Mutation("gemma3", "sliding_window", {"sliding_window": 4}),
    Mutation("gemma3", "rope_scaling.factor", _rope("gemma3", "rope_scaling", factor=4.0)),
    # the local layers' RoPE base as transformers 5 writes it (the maxtext environment's 5.17
    # reads no published rope_local_base_freq)
    Mutation(
        "gemma3",
        "rope_parameters.sliding_attention.rope_theta",
        {"rope_scaling": None, "rope_parameters": GEMMA3_ROPE | {"sliding_attention": LOCAL_50K}},
    ),
    Mutation("gemma3", "query_pre_attn_scalar", {"query_pre_attn_scalar": 64}),
    Mutation("gemma3", "final_logit_softcapping", {"final_logit_softcapping": 3.0}),
    Mutation("gemma3", "attn_logit_softcapping", {"attn_logit_softcapping": 2.0}),
    Mutation("gemma", "rope_theta", {"rope_theta": 50000.0}),
    Mutation("mixtral", "rope_theta", {"rope_theta": 50000.0}),
    # DeepSeek: routing and YaRN's attention scale
    Mutation("deepseek_v3", "routed_scaling_factor", {"routed_scaling_factor": 1.0}),
    Mutation("deepseek_v3", "topk_group", {"topk_group": 2}),
    Mutation("deepseek_v3", "norm_topk_prob", {"norm_topk_prob": False}),
    Mutation("deepseek_v2", "num_experts_per_tok", {"num_experts_per_tok": 1}),
    Mutation(
        "deepseek_v2",
        "rope_scaling.mscale_all_dim",
        _rope("deepseek_v2", "rope_scaling", mscale=1.0, mscale_all_dim=1.0),
    ),
]
# GPT-OSS, in both of its implementations: YaRN's fields, its window and layer types, its
# clamped SwiGLU, its routing.
GPT_OSS_YARN = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "original_max_position_embeddings": 4096,
    "truncate": False,
}
MUTATIONS += [
    Mutation("gpt_oss", field, changes, family)
    for family in ("gpt_oss", "maxtext")
    for field, changes in [
        ("rope_theta", {"rope_theta": 50000.0}),
        ("rope_scaling.factor", {"rope_scaling": {**GPT_OSS_YARN, "factor": 8.0}}),
        ("rope_scaling.beta_fast", {"rope_scaling": {**GPT_OSS_YARN, "beta_fast": 8.0}}),
        ("sliding_window", {"sliding_window": 4}),
        ("layer_types", {"layer_types": ["full_attention", "full_attention"]}),
        ("swiglu_limit", {"swiglu_limit": 0.5}),
        ("rms_norm_eps", {"rms_norm_eps": 0.5}),
        ("num_experts_per_tok", {"num_experts_per_tok": 1}),
    ]
]


def write_checkpoint(mutation: Mutation, out: Path, seed: int = 0) -> None:
    """The architecture's tiny checkpoint with the mutation, written by transformers."""
    import torch
    import transformers

    from onnxforge.core import texts
    from onnxforge.families.maxtext.architectures import ARCHITECTURES
    from onnxforge.families.synthetic import randomize_torch_model

    arch = ARCHITECTURES[mutation.arch]
    config = getattr(transformers, arch.config_class)(
        **copy.deepcopy({**arch.tiny, **mutation.changes})
    )
    torch.manual_seed(seed)
    model = getattr(transformers, arch.transformers_class)(config)
    randomize_torch_model(model, 0.1)
    model.save_pretrained(out)
    texts.write_tiny_tokenizer(out, config.vocab_size)


def run_one(mutation: Mutation, scratch: Path) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from onnxforge.core.errors import InputError
    from onnxforge.families import FAMILIES

    family = FAMILIES[mutation.family]

    started = time.monotonic()
    # Folders named by number: a refusal names its path, which must not spell the field.
    index = MUTATIONS.index(mutation)
    checkpoint, stage = scratch / f"{index}-checkpoint", scratch / f"{index}-stage"
    write_checkpoint(mutation, checkpoint)
    try:
        family.stage(checkpoint, stage, options={})
    except InputError as error:
        line = str(error)
        return {
            "outcome": REFUSED,
            "line": line,
            "names_the_field": any(part in line for part in mutation.field.split(".")),
            "seconds": round(time.monotonic() - started, 1),
        }
    ids = np.random.default_rng(0).integers(0, 256, (1, 48), dtype=np.int32)
    model = family.load(stage, jnp.float32)
    ours = np.asarray(jax.jit(model.apply)(model.params, ids), np.float32)
    (reference,) = family.reference_logits(checkpoint, stage, [ids])
    error = float(np.max(np.abs(ours - reference)))
    return {
        "outcome": HONOURED if error < TOLERANCE else CAUGHT,
        "max_abs": error,
        "logits_scale": float(np.max(np.abs(reference))),
        # Had the family ignored the field: transformers with the tiny config's own values on
        # the same weights; the parity gate must see that (None: the shapes change with it).
        "if_ignored_max_abs": if_ignored(mutation, checkpoint, ids, reference),
        "seconds": round(time.monotonic() - started, 1),
    }


def if_ignored(mutation: Mutation, checkpoint: Path, ids, reference) -> float | None:
    import numpy as np
    import transformers

    from onnxforge.families.maxtext.architectures import ARCHITECTURES
    from onnxforge.families.reference import transformers_logits

    arch = ARCHITECTURES[mutation.arch]
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    baseline = getattr(transformers, arch.config_class)(**copy.deepcopy(arch.tiny))
    for key in mutation.changes:
        setattr(config, key, getattr(baseline, key, None))
    if any(k in ("rope_theta", "rope_scaling", "rope_parameters") for k in mutation.changes):
        config.rope_parameters = baseline.rope_parameters  # transformers 5 reads RoPE here
    try:
        (ignored,) = transformers_logits(arch.transformers_class, checkpoint, config, [ids])
    except Exception:  # the weights no longer fit: the field sets a shape
        return None
    return float(np.max(np.abs(ignored - reference)))


def main(argv: list[str]) -> int:
    """OUT.json FAMILY [NAME ...]: the family's mutations (those NAMEd), in this process, which
    must be that family's environment (its transformers is the reference)."""
    out, family, wanted = Path(argv[0]), argv[1], set(argv[2:])
    results = {}
    with tempfile.TemporaryDirectory(prefix="onnxforge-mutations-") as scratch:
        for mutation in MUTATIONS:
            if mutation.family != family or (wanted and mutation.name not in wanted):
                continue
            try:
                results[mutation.name] = run_one(mutation, Path(scratch))
            except Exception as error:  # a crash is a finding: the table names it
                results[mutation.name] = {"outcome": "crashed", "line": repr(error)[:500]}
            print(mutation.name, results[mutation.name], flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
