"""KV-cache exports (variant f32-kv): the generation gates pass through the real DAG, a broken
cache fails gate 3, ONNX Runtime GenAI generates with the release folder, and the sparse
mixture of experts computes what the dense one does with each token's top k only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import genai_tokens
from onnxforge.core import paths
from onnxforge.driver import catalog
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.steps.parity import generation, parity
from registry import CONFIG

KV = "f32-kv"
TARGET = paths.Target(FAMILY.examples[0].name, "hf", KV)  # experts: ONNX Runtime's MoE op
PLAIN = paths.Target(FAMILY.examples[0].name, "hf", "f32-kv-plain")  # experts in plain ONNX
SETTINGS = parity.ParitySettings(**catalog.parity_settings(CONFIG, TARGET.model, "hf", KV))
GATES = ("prefill_vs_reference", "decode_vs_reference", "cache_consistency", "left_padded_batch")


@pytest.fixture(scope="module")
def kv_build(registry_build) -> Path:
    """tiny-gpt-oss's KV targets (both operator sets), which it declares (Example.variants):
    built by the registry build, beside its f32 target, on the same stage."""
    assert {KV, PLAIN.variant} <= set(FAMILY.examples[0].variants)
    return registry_build


@pytest.fixture(scope="module")
def report(kv_build) -> dict:
    return json.loads((kv_build / TARGET.parity / paths.REPORT_JSON).read_text())


def runner_for(kv_build: Path) -> generation.KVRunner:
    session = ort.InferenceSession(str(kv_build / TARGET.export / paths.ONNX_FILE))
    return generation.KVRunner(session)


@pytest.mark.dag
def test_kv_target_passes_the_four_generation_gates(kv_build, report):
    assert report["status"] == "PASS", report["failures"]
    section = report["generation"]
    assert all(section[gate]["passed"] for gate in GATES)
    decode = section["decode_vs_reference"]
    assert decode["steps"] >= 32 and decode["agree"]
    assert decode["onnx"] == decode["reference"]
    assert decode["past_window"] and decode["length"] > decode["sliding_window"] > 0
    lengths = section["left_padded_batch"]["lengths"]  # two shorter prompts and the decode's
    assert len(set(lengths)) == 3 and lengths[-1] == len(decode["prompt"]) == max(lengths)
    assert "## Generation" in (kv_build / TARGET.parity / paths.REPORT_MD).read_text()
    released = {p.name for p in (kv_build / TARGET.release).iterdir()}
    assert {"genai_config.json", "tokenizer.json", paths.ONNX_FILE} <= released


def graph_ops(kv_build: Path, target: paths.Target) -> set[str]:
    """The graph's operator types; every initializer is read by a node (none left behind by the
    graph passes)."""
    import onnx

    path = kv_build / target.export / paths.ONNX_FILE
    graph = onnx.load(str(path), load_external_data=False).graph
    read = {name for node in graph.node for name in node.input}
    assert [i.name for i in graph.initializer if i.name not in read] == [], target
    return {node.op_type for node in graph.node}


@pytest.mark.dag
def test_both_operator_sets_pass_the_four_generation_gates(kv_build, report):
    """f32-kv runs its attention and experts in ONNX Runtime's fused GroupQueryAttention and
    MoE; f32-kv-plain, the fallback any runtime runs, in standard ONNX (the experts per expert):
    each passes every gate on its own."""
    plain = json.loads((kv_build / PLAIN.parity / paths.REPORT_JSON).read_text())
    for target, record in ((TARGET, report), (PLAIN, plain)):
        assert record["status"] == "PASS", (target, record["failures"])
        assert all(record["generation"][gate]["passed"] for gate in GATES), target
    fused, plain_ops = graph_ops(kv_build, TARGET), graph_ops(kv_build, PLAIN)
    assert {"GroupQueryAttention", "MoE", "RotaryEmbedding"} <= fused
    assert not {"NonZero", "TopK"} & fused  # the MoE op routes by the router's logits
    assert "NonZero" in plain_ops
    assert not {"GroupQueryAttention", "MoE", "RotaryEmbedding"} & plain_ops


@pytest.mark.dag
def test_a_wrong_position_offset_fails_cache_consistency(kv_build, report, monkeypatch):
    runner = runner_for(kv_build)
    prompt = np.asarray([report["generation"]["decode_vs_reference"]["prompt"]], np.int64)
    stage = kv_build / TARGET.stage
    vocab, window = FAMILY.read_config(stage).vocab_size, parity.sliding_window(stage)

    def run() -> tuple[dict, list]:
        onnx = generation.run_onnx(runner, prompt, SETTINGS, window=window, vocab=vocab)
        return generation.cache_consistency(onnx, SETTINGS.gates)

    record, failures = run()
    assert record["passed"] and not failures  # the same check holds on the intact cache

    positions = generation._positions

    def shifted(mask, sequence):  # decode steps one position late; prefill untouched
        return positions(mask, sequence) + (1 if sequence == 1 else 0)

    monkeypatch.setattr(generation, "_positions", shifted)
    record, failures = run()
    assert not record["passed"]
    assert any("max_abs" in f for f in failures), failures


@pytest.mark.dag
def test_onnxruntime_genai_generates_the_gated_tokens(kv_build, report):
    """Both release folders: f32-kv with GenAI's shared fixed-size cache buffers (every layer
    appends in GroupQueryAttention), f32-kv-plain with a growing cache."""
    import onnxruntime_genai as og
    import transformers

    from onnxforge.core import texts

    tokenizer = og.Tokenizer(og.Model(str(kv_build / TARGET.release)))
    # GenAI reads the checkpoint's tokenizer as transformers does (real text, not ids alone).
    reference = transformers.AutoTokenizer.from_pretrained(str(kv_build / TARGET.release))
    for text in (texts.SHORT_PROMPT, texts.long_text()[:400]):
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert [int(i) for i in tokenizer.encode(text)] == expected
    for target, shared in ((TARGET, True), (PLAIN, False)):
        record = json.loads((kv_build / target.parity / paths.REPORT_JSON).read_text())
        decode = record["generation"]["decode_vs_reference"]
        config = json.loads((kv_build / target.release / "genai_config.json").read_text())
        assert config["search"]["past_present_share_buffer"] is shared, target
        tokens = genai_tokens(kv_build / target.release, decode["prompt"], decode["steps"])
        # The config's end of sequence (a synthetic checkpoint's: the last id) may end it early.
        assert tokens == decode["onnx"][: len(tokens)], target
        assert len(tokens) == decode["steps"] or tokens[-1] == config["model"]["eos_token_id"]


@pytest.mark.parametrize("operators", ["plain", "ort"])
def test_sparse_moe_matches_dense_with_top_k_experts_only(tmp_path, operators):
    """The sparse_moe primitive in ONNX Runtime vs the dense layer in JAX, on more tokens
    than experts; the plain graph routes per expert (NonZero), the ort one is one fused MoE
    node, and neither has a dense expert Einsum."""
    import jax
    import jax.numpy as jnp
    import onnx
    import onnx_ir as ir
    from flax import nnx
    from jax2onnx import to_onnx

    from onnxforge.families.gpt_oss.config import GptOssConfig
    from onnxforge.families.gpt_oss.model import MixtureOfExperts
    from onnxforge.graph import jax2onnx_plugins, lowering, passes

    cfg = GptOssConfig(
        vocab_size=8, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=6,
        num_experts_per_tok=2, sliding_window=0, layer_types=("full_attention",),
    )  # fmt: skip
    dense, sparse = MixtureOfExperts(cfg, jnp.float32), MixtureOfExperts(cfg, jnp.float32, True)
    rng = np.random.default_rng(0)
    for name, value in nnx.state(dense, nnx.Param).flat_state():
        values = jnp.asarray(rng.normal(0, 0.5, value.value.shape), jnp.float32)
        for module in (dense, sparse):
            target = module
            for part in name[:-1]:
                target = getattr(target, part)
            getattr(target, name[-1]).value = values
    x = rng.normal(0, 1, (3, 7, cfg.hidden_size)).astype(np.float32)
    expected = np.asarray(dense(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(sparse(jnp.asarray(x))), expected, atol=1e-5)

    spec = [jax.ShapeDtypeStruct(("batch", "sequence", cfg.hidden_size), jnp.float32)]
    jax2onnx_plugins.install()  # the export's lowerings (a constant Reshape target)
    with lowering.ops(operators):
        model_ir = to_onnx(lambda h: sparse(h), spec, opset=23, return_mode="ir")
    passes.remove_unused(model_ir)  # as the export does: what no output needs
    model = ir.to_proto(model_ir)
    path = tmp_path / "moe.onnx"
    onnx.save(model, path)
    ops = [node.op_type for node in model.graph.node]
    if operators == "plain":
        assert ops.count("NonZero") == cfg.num_local_experts
        assert ops.count("MatMul") == 3 * cfg.num_local_experts  # gate, up, down: per expert
    else:  # routed by the router's logits themselves: no TopK in the graph
        assert ops.count("MoE") == 1 and "NonZero" not in ops and "TopK" not in ops
    rank3 = {t.name for t in model.graph.initializer if len(t.dims) == 3}  # expert kernels
    assert not [n for n in model.graph.node if n.op_type == "Einsum" and set(n.input) & rank3]
    got = ort.InferenceSession(str(path)).run(None, {model.graph.input[0].name: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
