"""qmoe: MoE experts as com.microsoft.QMoE, held to ONNX Runtime's CPU kernel.

The exact gate: ONNX Runtime's QMoE output equals its float MoE op run with
``dequantize_experts``' weights (the packing is right); swapping two experts' codes breaks it
(the gate bites). Then the error against the float original, GPT-OSS's MXFP4 experts carried
over losslessly at 8 bits, and the locked ONNX Runtime's limits (int8 activations for block-wise
int8, no MXFP4 on the CPU) pinned so that a new version that lifts them is noticed.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxforge.families.gpt_oss import mxfp4
from onnxforge.families.gpt_oss.mxfp4_qmoe import from_mxfp4
from onnxforge.graph import qmoe

EXPERTS, TOP_K, HIDDEN, TOKENS = 8, 2, 64, 16
GPT_OSS = {"activation_alpha": 1.702, "activation_beta": 1.0, "swiglu_limit": 7.0}
MAXTEXT = {"activation_alpha": 1.0, "activation_beta": 0.0}
FP32_ENV = "ORT_QMOE_CPU_QNBIT_GEMM"  # "fp32": block-wise int8 on float activations


def experts(inner: int, bias: bool, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Float experts in the MoE op's layout (``graph.moe``): fc1 ``[e, 2 * inner, d]`` with
    gate and up rows interleaved, fc2 ``[e, d, inner]``; weights of a trained model's size."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.05):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    return {
        "fc1": normal(EXPERTS, 2 * inner, HIDDEN),
        "fc1_bias": normal(EXPERTS, 2 * inner, std=0.1) if bias else None,
        "fc2": normal(EXPERTS, HIDDEN, inner),
        "fc2_bias": normal(EXPERTS, HIDDEN, std=0.1) if bias else None,
    }


def moe_model(weights: dict, activation: dict) -> ir.Model:
    """One ``com.microsoft.MoE`` node as ``moe.lower_moe_op`` writes it, weights initializers."""
    x = ir.val("x", ir.DataType.FLOAT, ["tokens", HIDDEN])
    logits = ir.val("logits", ir.DataType.FLOAT, ["tokens", EXPERTS])
    values = {}
    for name, array in weights.items():
        if array is not None:
            values[name] = ir.Value(name=name, const_value=ir.tensor(array))
            values[name].shape = values[name].const_value.shape
            values[name].type = ir.TensorType(ir.DataType.FLOAT)
    attributes = {"k": TOP_K, "activation_type": "swiglu", "swiglu_fusion": 1}
    attributes.update(normalize_routing_weights=1, **activation)
    inputs = [x, logits, *(values.get(n) for n in ("fc1", "fc1_bias", "fc2", "fc2_bias"))]
    node = ir.node("MoE", inputs, attributes, domain="com.microsoft", name="layer0_moe")
    node.outputs[0].name, node.outputs[0].type = "y", ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(
        inputs=[x, logits],
        outputs=[node.outputs[0]],
        nodes=[node],
        initializers=list(values.values()),
        opset_imports={"": 21, "com.microsoft": 1},
        name="moe",
    )
    return ir.Model(graph, ir_version=10)


@contextlib.contextmanager
def environment(name: str, value: str | None):
    """``name=value`` while ONNX Runtime creates a session (its kernels read it then)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run(model: ir.Model, feeds: dict, fp32: bool = False) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    with environment(FP32_ENV, "fp32" if fp32 else None):
        session = ort.InferenceSession(
            ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    return session.run(None, feeds)[0]


def feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((TOKENS, HIDDEN)).astype(np.float32),
        "logits": rng.standard_normal((TOKENS, EXPERTS)).astype(np.float32),
    }


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def quantized(weights: dict, activation: dict, bits: int, block_size: int):
    """(the QMoE model, its report, the float MoE model on the weights QMoE computes with)."""
    model = moe_model(weights, activation)
    report = qmoe.quantize_moe_nodes(model, bits, block_size)
    inits = model.graph.initializers
    dequantized = dict(weights)
    for what in ("fc1", "fc2"):
        codes = inits[f"{what}_q{bits}"].const_value.numpy()
        scales = inits[f"{what}_q{bits}_scales"].const_value.numpy()
        dequantized[what] = qmoe.dequantize_experts(codes, scales, bits, block_size)
    return model, report, moe_model(dequantized, activation)


# ---------------------------------------------------------------------------- the packing


def test_4_bit_codes_pack_low_nibble_first():
    codes = np.array([[1, 2, 15, 0]], np.uint8)
    np.testing.assert_array_equal(qmoe.pack(codes, 4), [[0x21, 0x0F]])
    np.testing.assert_array_equal(qmoe.unpack(qmoe.pack(codes, 4), 4), codes)


@pytest.mark.parametrize("bits", qmoe.BITS)
@pytest.mark.parametrize("block_size", [16, 32, 0])
def test_each_block_keeps_its_largest_value_and_stays_within_a_step(bits, block_size):
    w = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    packed, scales = qmoe.quantize_matrix(w, bits, block_size)
    assert packed.shape == (6, 64 * bits // 8) and packed.dtype == np.uint8
    assert scales.shape == ((6, 64 // block_size) if block_size else (6,))
    deq = qmoe.dequantize_matrix(packed, scales, bits, block_size)
    group = block_size or 64
    blocks, deq_blocks = w.reshape(6, -1, group), deq.reshape(6, -1, group)
    peak = np.abs(blocks).argmax(-1)[..., None]
    np.testing.assert_array_equal(
        np.take_along_axis(deq_blocks, peak, -1), np.take_along_axis(blocks, peak, -1)
    )
    step = np.abs(scales).reshape(6, -1, 1)  # a half step, a whole one at the clipped edge
    assert (np.abs(deq_blocks - blocks) <= step * (1 + 1e-6)).all()


def test_an_all_zero_block_stays_zero():
    w = np.zeros((2, 64), np.float32)
    w[1, 32:] = 1.0
    for bits in qmoe.BITS:
        deq = qmoe.dequantize_matrix(*qmoe.quantize_matrix(w, bits, 32), bits, 32)
        np.testing.assert_array_equal(deq, w)


@pytest.mark.parametrize(
    "bits,block_size,k,message",
    [
        (3, 32, 64, "3 bits"),
        (4, 24, 64, "power of two"),
        (4, 8, 64, "power of two >= 16"),
        (4, 64, 32, "not a multiple of block_size 64"),
    ],
)
def test_a_layout_qmoe_cannot_take_is_refused_in_one_line(bits, block_size, k, message):
    with pytest.raises(ValueError, match=message):
        qmoe.quantize_experts(np.zeros((1, 4, k), np.float32), bits, block_size)


# ------------------------------------------------------ the exact gate against ORT's kernel

LAYOUTS = [(4, 32), (4, 16), (4, 0), (8, 32), (8, 0)]


@pytest.mark.parametrize("bits,block_size", LAYOUTS)
@pytest.mark.parametrize("inner", [32, 64])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("activation", [GPT_OSS, MAXTEXT], ids=["gpt-oss", "maxtext"])
def test_qmoe_computes_with_exactly_the_dequantized_experts(
    bits, block_size, inner, bias, activation
):
    weights = experts(inner, bias)
    model, _, dequantized = quantized(weights, activation, bits, block_size)
    assert [n.op_type for n in model.graph] == ["QMoE"]
    data = feeds()
    # block-wise int8 computes on int8 activations unless told otherwise (see the next test)
    got = run(model, data, fp32=(bits == 8 and block_size > 0))
    assert relative(got, run(dequantized, data)) < 1e-5


def test_block_wise_int8_runs_on_int8_activations_by_default():
    """ONNX Runtime 1.32.0's CPU has no float32 kernel for block-wise int8 experts: by default
    it quantizes the activations (off the dequantized float by ~1e-3..1e-2), at every
    accuracy_level. Per-channel int8, or ``ORT_QMOE_CPU_QNBIT_GEMM=fp32``, is exact."""
    model, _, dequantized = quantized(experts(64, True), GPT_OSS, 8, 32)
    data = feeds()
    error = relative(run(model, data), run(dequantized, data))
    assert 1e-5 < error < 5e-2, error


@pytest.mark.parametrize("bits,block_size", LAYOUTS)
def test_swapping_two_experts_codes_fails_the_exact_gate(bits, block_size):
    model, _, dequantized = quantized(experts(32, True), GPT_OSS, bits, block_size)
    data = feeds()
    routed = np.argsort(-data["logits"], axis=1)[:, :TOP_K]
    first, second = routed[0]  # both run for token 0
    codes = model.graph.initializers[f"fc1_q{bits}"]
    array = codes.const_value.numpy().copy()
    array[[first, second]] = array[[second, first]]
    codes.const_value = ir.tensor(array)
    got = run(model, data, fp32=(bits == 8 and block_size > 0))
    assert relative(got, run(dequantized, data)) > 1e-3


# ------------------------------------------------------------------- against the original


@pytest.mark.parametrize(
    "bits,block_size,bound", [(4, 32, 0.1), (4, 0, 0.2), (8, 32, 0.01), (8, 0, 0.01)]
)
def test_the_error_against_the_float_experts_is_that_of_the_bits(bits, block_size, bound):
    weights = experts(64, True)
    model, report, _ = quantized(weights, GPT_OSS, bits, block_size)
    data = feeds()
    error = relative(run(model, data), run(moe_model(weights, GPT_OSS), data))
    assert error < bound, error
    for what in ("fc1", "fc2"):  # the per-expert requantization error, for the report
        per_expert = report["layer0_moe"][what]["relative"]
        assert len(per_expert) == EXPERTS and 0 < max(per_expert) < bound


# ------------------------------------------------------------------------ the graph rewrite


def test_the_rewrite_replaces_only_the_moe_node_and_its_float_experts():
    weights = experts(32, True)
    model = moe_model(weights, GPT_OSS)
    dense = ir.Value(name="dense_kernel", const_value=ir.tensor(np.eye(HIDDEN, dtype=np.float32)))
    model.graph.register_initializer(dense)  # what a dense quantizer left: not ours to touch
    report = qmoe.quantize_moe_nodes(model, 4, 32)
    (node,) = model.graph
    assert (node.op_type, node.domain, node.name) == ("QMoE", "com.microsoft", "layer0_moe")
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    assert attributes == {
        "k": TOP_K,
        "activation_type": "swiglu",
        "swiglu_fusion": 1,
        "normalize_routing_weights": 1,
        **GPT_OSS,
        "expert_weight_bits": 4,
        "block_size": 32,
    }
    kept = {"dense_kernel", "fc1_bias", "fc2_bias"}
    assert set(model.graph.initializers) == kept | {
        "fc1_q4",
        "fc1_q4_scales",
        "fc2_q4",
        "fc2_q4_scales",
    }
    assert model.graph.initializers["fc1_q4"].const_value.shape == (EXPERTS, 64, HIDDEN // 2)
    assert model.graph.initializers["fc2_q4_scales"].const_value.shape == (EXPERTS, HIDDEN, 1)
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer() is node
    assert set(report["layer0_moe"]) == {"bits", "block_size", "fc1", "fc2"}


def test_per_channel_has_no_block_size_attribute():
    model = moe_model(experts(32, False), MAXTEXT)
    qmoe.quantize_moe_nodes(model, 8, 0)
    (node,) = model.graph
    assert "block_size" not in node.attributes
    assert model.graph.initializers["fc1_q8_scales"].const_value.shape == (EXPERTS, 64)


def test_moe_with_separate_fc3_is_refused():
    model = moe_model(experts(32, False), MAXTEXT)
    (node,) = model.graph
    fc3 = ir.Value(name="fc3", const_value=ir.tensor(np.zeros((EXPERTS, 32, HIDDEN), np.float32)))
    model.graph.register_initializer(fc3)
    node.resize_inputs(7)
    node.replace_input_with(6, fc3)
    with pytest.raises(ValueError, match="fc3"):
        qmoe.quantize_moe_nodes(model)


def test_the_rewrite_follows_ort_s_dense_matmulnbits_quantizer():
    """The dense quantizer (ONNX Runtime's own) leaves the MoE node alone; ours then takes it."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weights = experts(32, True)
    model = moe_model(weights, GPT_OSS)
    kernel = np.random.default_rng(2).standard_normal((HIDDEN, HIDDEN)).astype(np.float32) * 0.1
    w = ir.Value(name="dense_kernel", const_value=ir.tensor(kernel))
    w.shape, w.type = w.const_value.shape, ir.TensorType(ir.DataType.FLOAT)
    model.graph.register_initializer(w)
    (moe,) = model.graph
    matmul = ir.node("MatMul", [model.graph.inputs[0], w], name="dense")
    matmul.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    model.graph.insert_before(moe, matmul)
    moe.replace_input_with(0, matmul.outputs[0])
    quantizer = MatMulNBitsQuantizer(ir.to_proto(model), bits=4, block_size=32, is_symmetric=True)
    quantizer.process()
    model = ir.from_proto(quantizer.model.model)
    qmoe.quantize_moe_nodes(model, 4, 32)
    assert sorted(n.op_type for n in model.graph) == ["MatMulNBits", "QMoE"]
    data = feeds()
    reference = moe_model(weights, GPT_OSS)
    expected = run(reference, {**data, "x": data["x"] @ kernel})
    assert relative(run(model, data), expected) < 0.15


# ----------------------------------------------------------------------- GPT-OSS's MXFP4


def mxfp4_experts(inner: int, seed: int = 3):
    """Staged GPT-OSS experts: gate, up ``[e, inner, d/32, 16]`` and down ``[e, d, inner/32,
    16]`` MXFP4 blocks with their scales, as ``hf_checkpoint.mxfp4_packed`` stages them."""
    rng = np.random.default_rng(seed)
    kernel = {  # the model's [e, in, out] kernels
        "gate": rng.standard_normal((EXPERTS, HIDDEN, inner)) * 0.05,
        "up": rng.standard_normal((EXPERTS, HIDDEN, inner)) * 0.05,
        "down": rng.standard_normal((EXPERTS, inner, HIDDEN)) * 0.05,
    }
    return {name: mxfp4.quantize(np.swapaxes(k, 1, 2)) for name, k in kernel.items()}


def fc_from_mxfp4(staged) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (gate_b, gate_s), (up_b, up_s) = staged["gate"], staged["up"]
    return {
        "fc1": (qmoe.interleave_rows(gate_b, up_b), qmoe.interleave_rows(gate_s, up_s)),
        "fc2": staged["down"],
    }


def test_interleaved_blocks_decode_to_the_moe_op_s_fc1():
    staged = mxfp4_experts(32)
    gate, up = (mxfp4.dequantize(*staged[n], np.float32) for n in ("gate", "up"))
    fc1 = mxfp4.dequantize(*fc_from_mxfp4(staged)["fc1"], np.float32)
    np.testing.assert_array_equal(fc1[:, 0::2], gate)  # moe.interleave: gate rows even
    np.testing.assert_array_equal(fc1[:, 1::2], up)


@pytest.mark.parametrize("block_size", [32, 16])
def test_mxfp4_experts_become_int8_losslessly(block_size):
    for blocks, scales in fc_from_mxfp4(mxfp4_experts(64)).values():
        experts_q = from_mxfp4(blocks, scales, 8, block_size)
        decoded = mxfp4.dequantize(blocks, scales, np.float32)
        np.testing.assert_array_equal(experts_q.dequantize(), decoded)
        assert not experts_q.relative_error.any() and not experts_q.max_abs_error.any()


@pytest.mark.parametrize("bits,block_size", [(8, 32), (4, 32)])
def test_mxfp4_experts_through_the_graph_rewrite(bits, block_size):
    """The float MoE node holds the decoded MXFP4 experts; the rewrite takes them from the
    blocks instead. int8: QMoE computes exactly the checkpoint's experts; int4: requantized,
    exact against what it holds, the error per expert in the report."""
    packed = fc_from_mxfp4(mxfp4_experts(64))
    decoded = {what: mxfp4.dequantize(*packed[what], np.float32) for what in ("fc1", "fc2")}
    weights = experts(64, True, seed=4) | decoded  # the biases float, as the model has them
    model = moe_model(weights, GPT_OSS)
    calls = []

    def source(node, what):
        calls.append((node.name, what))
        return from_mxfp4(*packed[what], bits, block_size)

    report = qmoe.quantize_moe_nodes(model, bits, block_size, source=source)
    assert calls == [("layer0_moe", "fc1"), ("layer0_moe", "fc2")]
    held = dict(weights)
    for what in ("fc1", "fc2"):
        codes, scales = (
            model.graph.initializers[f"{what}_q{bits}{part}"] for part in ("", "_scales")
        )
        held[what] = qmoe.dequantize_experts(
            codes.const_value.numpy(), scales.const_value.numpy(), bits, block_size
        )
    data = feeds()
    got = run(model, data, fp32=True)
    assert relative(got, run(moe_model(held, GPT_OSS), data)) < 1e-5
    checkpoint = relative(got, run(moe_model(weights, GPT_OSS), data))
    errors = [max(report["layer0_moe"][w]["relative"]) for w in ("fc1", "fc2")]
    if bits == 8:
        assert checkpoint < 1e-5 and errors == [0.0, 0.0]
    else:
        assert checkpoint > 1e-4 and min(errors) > 0 and max(errors) < 0.2


def test_a_source_of_the_wrong_layout_is_refused():
    packed = fc_from_mxfp4(mxfp4_experts(32))
    model = moe_model(experts(32, False), GPT_OSS)
    with pytest.raises(ValueError, match="given experts"):
        qmoe.quantize_moe_nodes(model, 4, 32, source=lambda n, w: from_mxfp4(*packed[w], 8, 32))


def test_ort_s_cpu_qmoe_does_not_run_mxfp4():
    """ONNX Runtime 1.32.0's CPU QMoE takes ``quant_type='fp4'`` in its schema but reads the
    float8e8m0 block scales as float32 ("Tensor type mismatch"). If this starts to pass, a
    new ONNX Runtime runs MXFP4 on the CPU: offer the checkpoint's blocks as they are."""
    import onnx
    from onnx import TensorProto, helper

    (blocks1, scales1), (blocks2, scales2) = fc_from_mxfp4(mxfp4_experts(32)).values()

    def init(name, array, dtype=None):
        if dtype is None:
            return onnx.numpy_helper.from_array(array, name)
        return helper.make_tensor(name, dtype, array.shape, array.tobytes(), raw=True)

    e8m0 = TensorProto.FLOAT8E8M0
    initializers = [
        init("w1", blocks1.reshape(EXPERTS, 64, HIDDEN // 2)),
        init("s1", scales1, e8m0),
        init("w2", blocks2.reshape(EXPERTS, HIDDEN, 16)),
        init("s2", scales2, e8m0),
        init("g1", np.ones(EXPERTS, np.float32)),
        init("g2", np.ones(EXPERTS, np.float32)),
    ]
    inputs = ["x", "logits", "w1", "s1", "", "w2", "s2", *[""] * 8, "g1", "g2"]
    attributes = {"k": TOP_K, "activation_type": "swiglu", "swiglu_fusion": 1, **GPT_OSS}
    node = helper.make_node(
        "QMoE", inputs, ["y"], domain="com.microsoft", quant_type="fp4", **attributes
    )
    graph = helper.make_graph(
        [node],
        "fp4",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in feeds_shapes()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [TOKENS, HIDDEN])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    with pytest.raises(Exception, match="Tensor type mismatch"):
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        session.run(None, feeds())


def feeds_shapes():
    return [("x", [TOKENS, HIDDEN]), ("logits", [TOKENS, EXPERTS])]
