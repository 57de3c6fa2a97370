"""The quantized variants (int4-kv, int8-kv) of the examples that declare them, through the
real DAG (the registry build): each passes its exactness gate (ONNX Runtime at accuracy level
1 against JAX on the dequantized weights) and, where its weights are trained, its quality gate
(the graph as deployed against transformers at full precision); GenAI generates with its
folder. And the exactness gate bites: a wrong block scale, a transposed block and two swapped
experts each fail it, the first one where the quality gate alone would pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import genai_tokens
from onnxforge.core import paths
from onnxforge.driver import catalog
from onnxforge.families import get_family
from registry import CONFIG, target, variant_params

pytestmark = pytest.mark.dag

QUALITY = ("kl_mean", "kl_p99", "top1_agreement", "top5_overlap", "ppl_ratio", "greedy_prefix")


def _report(build: Path, t: paths.Target) -> dict:
    return json.loads((build / t.parity / paths.REPORT_JSON).read_text())


def _ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize(("family", "example", "variant"), variant_params(quantized=True))
def test_a_quantized_target_passes_exactness_and_its_quality_is_judged(
    registry_build, family, example, variant
):
    t = target(example, variant)
    report = _report(registry_build, t)
    assert report["status"] == "PASS", report["failures"]
    exact = report["summary"]["onnx_vs_jax"]  # level 1 vs JAX on the dequantized weights
    assert exact["max_abs"] < 1e-3 and exact["kl_max"] < 1e-4, exact
    assert report["decode"]["agree"]
    assert all(gate["passed"] for gate in report["exactness"]["generation"].values())
    quality = report["quality"]
    # Gated where the weights are trained; random weights' figures are reported only.
    assert quality["gated"] == ("trained=" in example.source)
    assert set(QUALITY) <= set(quality["overall"]), quality["overall"]
    bits = CONFIG["variants"][variant]["quantize"]["bits"]
    assert quality["gates"] == CONFIG["gates"][f"int{bits}"]
    # What the graph holds: MatMulNBits for dense weights, QMoE for experts (ops: ort).
    ops = _ops(registry_build / t.export / paths.ONNX_FILE)
    assert "MatMulNBits" in ops and ("QMoE" in ops) == example.moe and "MoE" not in ops
    quantized = report["quantization"]["quantized"]
    assert quantized["bytes"]["after"] < quantized["bytes"]["before"] / 2
    if example.moe:
        errors = [e for node in quantized["experts"].values() for e in node["fc1"]["relative"]]
        assert errors and max(errors) < (0.15 if "int4" in variant else 0.01), errors
    # GenAI runs the released folder: its greedy tokens are ONNX Runtime's, as deployed.
    decode = quality["decode"]
    prompt = report["exactness"]["generation"]["decode_vs_reference"]["prompt"]
    tokens = genai_tokens(registry_build / t.release, prompt, len(decode["onnx"]))
    assert tokens and tokens == decode["onnx"][: len(tokens)]


def test_an_int4_model_claimed_as_int8_fails_the_int8_quality_gate(registry_build):
    """The quality gates tell the precisions apart: the trained tiny Llama's int4 figures
    fail gates.int8 (which its int8 figures pass)."""
    from onnxforge.steps.parity import quality

    int4 = _report(registry_build, paths.Target("tiny-llama-trained", "hf", "int4-kv"))
    int8 = _report(registry_build, paths.Target("tiny-llama-trained", "hf", "int8-kv"))
    gates = CONFIG["gates"]["int8"]
    assert not quality.quality_gate(int8["quality"]["overall"], gates)
    failed = quality.quality_gate(int4["quality"]["overall"], gates)
    assert any(line.startswith("kl_mean") for line in failed), failed


# Perturbations of a built export's quantized weights (the tiny GPT-OSS, trained, int4: dense
# MatMulNBits and QMoE experts), each run through the quantized parity in this process.
MODEL, VARIANT = "tiny-gpt-oss-trained", "int4-kv"


def _scale_one_block(model) -> str:
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    scales = node.inputs[2]
    values = scales.const_value.numpy().copy()
    values.flat[0] *= 1.5
    scales.const_value = _tensor(values, scales.name)
    return f"{node.name}: its first block's scale x1.5"


def _transpose_one_block(model) -> str:
    from onnxforge.graph import qmoe

    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    bits, block = node.attributes.get_int("bits"), node.attributes.get_int("block_size")
    packed = node.inputs[1]
    values = packed.const_value.numpy().copy()  # [N, blocks, block * bits / 8]
    codes = qmoe.unpack(values[:block, 0], bits)  # rows 0..block of the first K block
    values[:block, 0] = qmoe.pack(np.ascontiguousarray(codes.T), bits)
    packed.const_value = _tensor(values, packed.name)
    return f"{node.name}: its first {block}x{block} block transposed"


def _swap_two_experts(model) -> str:
    node = next(n for n in model.graph if n.op_type == "QMoE")
    for index in (2, 3):  # fc1's codes and scales
        value = node.inputs[index]
        values = value.const_value.numpy().copy()
        values[[0, 1]] = values[[1, 0]]
        value.const_value = _tensor(values, value.name)
    return f"{node.name}: experts 0 and 1 swapped in fc1"


def _tensor(values: np.ndarray, name: str):
    import onnx_ir as ir

    return ir.tensor(values, name=name)


def _perturbed_parity(build: Path, scratch: Path, perturb) -> tuple[str, dict]:
    import onnx_ir as ir

    from onnxforge.graph import tracing
    from onnxforge.steps.parity.parity import ParitySettings
    from onnxforge.steps.parity.quantized import run_quantized_parity

    t = paths.Target(MODEL, "hf", VARIANT)
    base = paths.Target(MODEL, "hf", CONFIG["variants"][VARIANT]["quantizes"])
    export = scratch / "export"
    model = ir.load(build / t.export / paths.ONNX_FILE)
    what = perturb(model)
    export.mkdir()
    tracing.save(model, export)
    for extra in (build / t.export).iterdir():
        if extra.name not in (paths.ONNX_FILE, paths.DATA_FILE):
            shutil.copy2(extra, export / extra.name)
    settings = ParitySettings(**catalog.parity_settings(CONFIG, MODEL, "hf", VARIANT))
    (scratch / "out").mkdir()
    report, _ = run_quantized_parity(
        get_family("gpt_oss"),
        build / t.download,
        build / t.stage,
        export,
        build / base.export,
        settings,
        scratch=scratch / "out",
    )
    return what, report


@pytest.mark.parametrize(
    "perturb", [_scale_one_block, _transpose_one_block, _swap_two_experts], ids=lambda f: f.__name__
)
def test_a_wrong_quantized_weight_fails_the_exactness_gate(registry_build, tmp_path, perturb):
    what, report = _perturbed_parity(registry_build, tmp_path, perturb)
    assert report["status"] == "FAIL", what
    assert any(f.startswith("exactness") for f in report["failures"]), (what, report["failures"])
    if perturb is _scale_one_block:  # what the quality gate alone would have let through
        assert report["quality"]["gated"] and not report["quality"]["failures"], what
