"""The maxtext family's KV-cache exports (f32-kv, f32-kv-plain) through the real DAG: every
example (every architecture has a KV decoder: DeepSeek's MLA and MaxText's GPT-OSS included)
passes the four generation gates in both, in the registry build's one Snakemake call, and ONNX
Runtime GenAI generates the gated tokens; and MaxText's decoder steps agree with its
full-sequence forward in JAX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import genai_tokens
from onnxforge.core import paths
from onnxforge.families.maxtext import FAMILY as MAXTEXT
from onnxforge.families.maxtext.architectures import ARCHITECTURES, rope_type
from registry import python_for

KV, KV_PLAIN = "f32-kv", "f32-kv-plain"  # ONNX Runtime's fused attention and MoE; plain ONNX
# The KV variants the maxtext examples declare (Example.variants: Architecture.export_variants),
# built by the registry build: among them tiny Mixtral's and Qwen3 MoE's sparse experts, the
# sliding windows of Mistral, Gemma 2 and Gemma 3, decoded past them, and Gemma 2's two
# attentions per MaxText layer, DeepSeek's latent attention (MLA) and GPT-OSS's sinks.
BUILDS = tuple(
    (example.name, variant)
    for example in MAXTEXT.examples
    for variant in example.variants
    if variant in (KV, KV_PLAIN)
)
GATES = ("prefill_vs_reference", "decode_vs_reference", "cache_consistency", "left_padded_batch")
# The trained twins (tiny-<name>-trained): built in f32 and the quantized variants only.
TRAINED = {e.name for e in MAXTEXT.examples if "trained=" in e.source}
# Each example's architecture (tiny-llama3.2: Llama 3.1's), by the MaxText model it names.
ARCH_OF = {
    e.name: next(a for a in ARCHITECTURES.values() if a.default_model == e.options["model"])
    for e in MAXTEXT.examples
}
# The experts that take the sparse path (sparse_moe.supports: Mixtral's SwiGLU; GPT-OSS's
# clamped one with biases), fused as one com.microsoft.MoE in f32-kv; the others keep
# MaxText's own (Qwen3 MoE renormalizes, DeepSeek routes by groups and shares experts).
SPARSE_EXPERTS = {"tiny-mixtral", "tiny-gpt_oss"}
# MaxText's own attention, not GroupQueryAttention: a soft cap (Gemma 2), sinks (GPT-OSS),
# keys and values of two widths (DeepSeek's MLA).
OWN_ATTENTION = {"tiny-gemma2", "tiny-gpt_oss", "tiny-deepseek_v2", "tiny-deepseek_v3"}
# MaxText's plain RoPE becomes ONNX's RotaryEmbedding; Llama 3's scaled one
# (LLaMARotaryEmbedding) and YaRN stay MaxText's own.
OWN_ROPE = ("llama3", "yarn")


def fused_ops(model: str) -> set[str]:
    """ONNX Runtime's fused operators an f32-kv export of ``model`` holds."""
    attention = set() if model in OWN_ATTENTION else {"GroupQueryAttention"}
    return attention | ({"MoE"} if model in SPARSE_EXPERTS else set())


@pytest.fixture(scope="module")
def maxtext_kv_build(registry_build) -> Path:
    python_for(MAXTEXT)
    assert not [a.model_type for a in ARCHITECTURES.values() if a.kv_refusal]
    # every example of an architecture (the trained twins stand for quantization only)
    assert {model for model, _ in BUILDS} == set(ARCH_OF) - TRAINED, set(ARCH_OF) - TRAINED
    return registry_build


@pytest.mark.dag
@pytest.mark.maxtext
@pytest.mark.parametrize("model,variant", BUILDS)
def test_maxtext_kv_target_passes_the_four_generation_gates(maxtext_kv_build, model, variant):
    target = paths.Target(model, "hf", variant)
    report = json.loads((maxtext_kv_build / target.parity / paths.REPORT_JSON).read_text())
    assert report["status"] == "PASS", report["failures"]
    section = report["generation"]
    assert all(section[gate]["passed"] for gate in GATES)
    decode = section["decode_vs_reference"]
    assert decode["steps"] >= 32 and decode["onnx"] == decode["reference"]
    if model == "tiny-mistral":
        assert decode["past_window"] and decode["length"] > decode["sliding_window"] > 0
    # ONNX Runtime GenAI generates the gated tokens (f32-kv: in its shared cache buffers).
    tokens = genai_tokens(maxtext_kv_build / target.release, decode["prompt"], decode["steps"])
    assert tokens and tokens == decode["onnx"][: len(tokens)]
    manifest = json.loads((maxtext_kv_build / target.export / "manifest.json").read_text())
    # GenAI's model type as the architecture's file declares it
    genai_config = json.loads((maxtext_kv_build / target.release / "genai_config.json").read_text())
    assert genai_config["model"]["type"] == ARCH_OF[model].genai_type
    onnx_path = maxtext_kv_build / target.export / paths.ONNX_FILE
    import onnx

    ops = {node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    assert "MatMul" in ops, manifest
    fused = fused_ops(model)
    if variant == KV_PLAIN:
        assert manifest["export"]["contrib_ops"] == [], manifest
        assert "RotaryEmbedding" not in ops  # MaxText's own rotation
        if model in SPARSE_EXPERTS:
            assert "NonZero" in ops  # the experts run sparse, in plain ONNX
    else:  # ONNX Runtime's fused operators
        assert manifest["export"]["contrib_ops"] == sorted(fused), manifest
        if model in SPARSE_EXPERTS:
            assert "NonZero" not in ops and "TopK" not in ops  # MoE routes by the logits
        # MaxText's plain RoPE: its frequencies, ONNX's rotation
        assert ("RotaryEmbedding" in ops) == (rope_type(ARCH_OF[model].tiny) not in OWN_ROPE)


@pytest.mark.dag
@pytest.mark.maxtext
def test_a_wrong_position_offset_fails_cache_consistency_for_maxtext(maxtext_kv_build, monkeypatch):
    """The tiny Llama's export with decode steps one position late: gate 3 fails."""
    import numpy as np
    import onnxruntime as ort

    from onnxforge.driver import catalog
    from onnxforge.steps.parity import generation, parity
    from registry import CONFIG

    target = paths.Target("tiny-llama", "hf", KV)
    settings = parity.ParitySettings(**catalog.parity_settings(CONFIG, target.model, "hf", KV))
    report = json.loads((maxtext_kv_build / target.parity / paths.REPORT_JSON).read_text())
    session = ort.InferenceSession(str(maxtext_kv_build / target.export / paths.ONNX_FILE))
    runner = generation.KVRunner(session)
    prompt = np.asarray([report["generation"]["decode_vs_reference"]["prompt"]], np.int64)
    vocab = MAXTEXT.read_config(maxtext_kv_build / target.stage).vocab_size

    def run():
        onnx = generation.run_onnx(runner, prompt, settings, window=0, vocab=vocab)
        return generation.cache_consistency(onnx, settings.gates)

    record, failures = run()
    assert record["passed"] and not failures
    positions = generation._positions
    monkeypatch.setattr(
        generation, "_positions", lambda m, s: positions(m, s) + (1 if s == 1 else 0)
    )
    record, failures = run()
    assert not record["passed"] and any("max_abs" in f for f in failures), failures
