"""graph.quantize: ONNX Runtime's weight-only quantizer over an export folder; the weights read
back as ONNX Runtime computes with them; and put back into the JAX parameter leaves they came
from (fused q/k/v, transposed, tied), for the exactness gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.core.errors import InputError
from onnxforge.core.paths import DATA_FILE, ONNX_FILE
from onnxforge.graph import quantize as q

VOCAB, EMBED = 96, 64


def leaves(seed: int = 0, *, tied: bool = True) -> dict[str, np.ndarray]:
    """A tiny decoder's parameters as JAX holds them."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    params = {
        "embed": normal(VOCAB, EMBED),
        "q": normal(EMBED, 4, 16),
        "k": normal(EMBED, 2, 16),
        "v": normal(EMBED, 2, 16),
        "o": normal(EMBED, 128),  # [out, in]: the graph holds it transposed
        "up": normal(EMBED, EMBED),
        "experts": normal(2, EMBED, 8),
    }
    if not tied:
        params["head"] = normal(EMBED, VOCAB)
    return params


def fused_qkv(p):
    return np.concatenate([p[n].reshape(EMBED, -1) for n in ("q", "k", "v")], axis=1)


def forward(p, ids):
    x = p["embed"][ids]
    y = (x @ fused_qkv(p)) @ p["o"].T @ p["up"]
    return y @ (p["head"] if "head" in p else p["embed"].T)


def export(folder: Path, p: dict, opset: int = 21) -> Path:
    """The graph an export writes for ``forward``: fused, transposed copies as initializers,
    every weight in external data."""
    weights = {
        "embed": p["embed"],
        "qkv_fused_weight": fused_qkv(p),
        "o_weight": np.ascontiguousarray(p["o"].T),
        "up_weight": p["up"],
        "head_weight": p["head"] if "head" in p else np.ascontiguousarray(p["embed"].T),
        "experts": p["experts"],
    }
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["x"], name="embed_gather"),
        helper.make_node("MatMul", ["x", "qkv_fused_weight"], ["h"], name="qkv"),
        helper.make_node("MatMul", ["h", "o_weight"], ["g"], name="o"),
        helper.make_node("MatMul", ["g", "up_weight"], ["u"], name="up"),
        helper.make_node("MatMul", ["u", "head_weight"], ["logits"], name="lm_head"),
        helper.make_node("MatMul", ["x", "experts"], ["routed"], name="experts"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["sequence"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["sequence", VOCAB]),
            helper.make_tensor_value_info("routed", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model, folder / ONNX_FILE, save_as_external_data=True, location=DATA_FILE, size_threshold=0
    )
    (folder / "genai_config.json").write_text("{}")
    return folder


def session(folder: Path, accuracy_level: int = 1) -> ort.InferenceSession:
    """A plain graph's DequantizeLinear + MatMul run as MatMulNBits at the session's level."""
    options = ort.SessionOptions()
    for key, value in q.session_config(accuracy_level).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(
        str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )


def run(folder: Path, ids: np.ndarray) -> np.ndarray:
    return session(folder).run(["logits"], {"input_ids": ids})[0]


IDS = np.random.default_rng(1).integers(0, VOCAB, 40).astype(np.int64)


def matmul_folder(folder: Path, k: int, n: int = 40, seed: int = 0) -> tuple[Path, np.ndarray]:
    """One weight MatMul, ``x [rows, k] @ w [k, n]``, saved as an export is."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(w, "w")],
    )
    folder.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save_model(
        model, folder / ONNX_FILE, save_as_external_data=True, location=DATA_FILE, size_threshold=0
    )
    return folder, w


def relative_error(folder: Path, w_deq: np.ndarray, rows: int = 7, level: int = 1) -> float:
    x = np.random.default_rng(2).standard_normal((rows, w_deq.shape[0])).astype(np.float32)
    (y,) = session(folder, level).run(None, {"x": x})
    expected = x.astype(np.float64) @ w_deq.astype(np.float64)
    return float(np.abs(y - expected).max() / np.abs(expected).max())


SCHEMES = {  # (quantize's keywords, K): 80 is a partial last block, 96 an odd count of them
    "rtn int4 sym": ({}, 80),
    "rtn int4 asym": ({"symmetric": False}, 96),
    "rtn int8 sym": ({"bits": 8}, 96),
    "rtn int8 asym": ({"bits": 8, "symmetric": False}, 80),
    "k_quant int4": ({"algorithm": "k_quant", "symmetric": False}, 128),
    "k_quant int8": ({"algorithm": "k_quant", "symmetric": False, "bits": 8}, 96),
    "hqq int4": ({"algorithm": "hqq", "symmetric": False}, 96),
    "rtn int4 sym block 64": ({"block_size": 64}, 128),
}
OPS = {"ort": ("MatMulNBits",), "plain": ("DequantizeLinear", "MatMul")}


# hqq's float zero points have no DequantizeLinear form: ort only (its refusal tested below).
SCHEME_FORMATS = [
    (scheme, fmt)
    for scheme in SCHEMES
    for fmt in OPS
    if not (fmt == "plain" and SCHEMES[scheme][0].get("algorithm") == "hqq")
]


@pytest.mark.parametrize(("scheme", "fmt"), SCHEME_FORMATS)
def test_onnx_runtime_computes_with_the_weights_read_back(tmp_path, scheme, fmt):
    """At accuracy level 1 (float32 activations) ONNX Runtime's output is x @ the dequantized
    weight: what the exactness gate's JAX model is run with."""
    keywords, k = SCHEMES[scheme]
    source, w = matmul_folder(tmp_path / "f32", k)
    out = tmp_path / "q"
    summary = q.quantize(source, out, accuracy_level=1, format=fmt, **keywords)
    assert summary["matmuls_quantized"] == 1 and not summary["skipped"]
    assert summary["bytes"]["after"] < summary["bytes"]["before"]
    model = onnx.load(str(out / ONNX_FILE), load_external_data=False)
    assert tuple(node.op_type for node in model.graph.node) == OPS[fmt]
    assert {t.name for t in model.graph.initializer}.isdisjoint({"w"})  # no float copy left
    (name, weight), *others = q.dequantized_weights(out).items()
    assert name == "w" and not others and weight.shape == w.shape
    step = np.abs(w - weight).max()
    assert 0 < step < (0.6 if keywords.get("bits", 4) == 4 else 0.05)  # quantized, not garbage
    assert relative_error(out, weight) < 2e-6


def test_plain_and_ort_hold_the_same_weights(tmp_path):
    source, _ = matmul_folder(tmp_path / "f32", 96)
    for keywords in ({}, {"bits": 8}, {"symmetric": False}, {"bits": 8, "symmetric": False}):
        q.quantize(source, tmp_path / "ort", **keywords)
        q.quantize(source, tmp_path / "plain", format="plain", **keywords)
        ort_weight = q.dequantized_weights(tmp_path / "ort")["w"]
        np.testing.assert_array_equal(q.dequantized_weights(tmp_path / "plain")["w"], ort_weight)
        for folder in ("ort", "plain"):
            for path in (tmp_path / folder).iterdir():
                path.unlink()


@pytest.mark.parametrize("fmt", list(OPS))
@pytest.mark.parametrize("bits", [4, 8])
def test_accuracy_level_4_quantizes_the_activations(tmp_path, bits, fmt):
    """Level 4 (the CPU default) runs int8 activations: ONNX Runtime then differs from
    x @ dequantized(w) by ~1e-2 relative, where level 1 agrees to float32 rounding. A plain
    graph runs as MatMulNBits too, at the session's level (4 unless ``session_config``)."""
    source, _ = matmul_folder(tmp_path / "f32", 256, 64)
    errors = {}
    for level in (1, 4):
        out = tmp_path / f"level{level}"
        q.quantize(source, out, bits=bits, accuracy_level=level, format=fmt)
        errors[level] = relative_error(out, q.dequantized_weights(out)["w"], 16, level)
    assert errors[1] < 2e-6 < 1e-4 < errors[4] < 5e-2, errors
    if fmt == "plain":  # a session without the option: level 4 whatever the variant says
        x = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
        options = ort.SessionOptions()
        default = ort.InferenceSession(str(tmp_path / "level1" / ONNX_FILE), options)
        y4 = session(tmp_path / "level1", 4).run(None, {"x": x})[0]
        np.testing.assert_array_equal(default.run(None, {"x": x})[0], y4)


@pytest.mark.parametrize("lm_head", ["same", "int8"])
def test_the_decoder_runs_as_its_parameters_with_the_weights_read_back(tmp_path, lm_head):
    """Fused q/k/v, a transposed weight and a tied embedding: every leaf the graph quantized
    gets the values ONNX Runtime computes with, and the numpy model on them is the graph."""
    params = leaves()
    source = export(tmp_path / "f32", params)
    out = tmp_path / "int4"
    summary = q.quantize(source, out, accuracy_level=1, embeddings=True, lm_head=lm_head)
    assert summary["matmuls_quantized"] == 4
    assert summary["skipped"] == {"experts": pytest.approx(summary["skipped"]["experts"])}
    assert "batched" in summary["skipped"]["experts"]
    assert "tied" in summary["embeddings"]["as"]
    assert summary["copied"] == ["genai_config.json"]
    model = onnx.load(str(out / ONNX_FILE), load_external_data=False)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 4 and "GatherBlockQuantized" in ops
    names = {t.name for t in model.graph.initializer}
    assert names.isdisjoint({"embed", "head_weight", "qkv_fused_weight"})  # no float copies
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert {t.external_data[0].value for t in external} == {DATA_FILE}

    dequantized = q.dequantized_weights(out)
    assert set(dequantized) == {"embed", "head_weight", "qkv_fused_weight", "o_weight", "up_weight"}
    np.testing.assert_array_equal(dequantized["embed"], dequantized["head_weight"].T)
    new = q.params_with_dequantized(params, q.float_initializers(source), dequantized)
    assert new["experts"] is params["experts"]  # left float: the same leaf
    assert all(not np.array_equal(new[n], params[n]) for n in ("embed", "q", "k", "v", "o", "up"))
    expected = forward(new, IDS)
    assert np.abs(run(out, IDS) - expected).max() < 2e-6 * np.abs(expected).max()


def test_an_untied_embedding_and_an_int8_lm_head(tmp_path):
    params = leaves(tied=False)
    source = export(tmp_path / "f32", params)
    out = tmp_path / "int4"
    summary = q.quantize(source, out, accuracy_level=1, embeddings=True, lm_head="int8")
    assert summary["matmuls_by_bits"] == {"4": 3, "8": 1}
    assert "ONNX Runtime's rtn" in summary["embeddings"]["as"]
    model = onnx.load(str(out / ONNX_FILE), load_external_data=False)
    bits = {
        node.name: helper.get_attribute_value(next(a for a in node.attribute if a.name == "bits"))
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
    }
    assert bits.pop("lm_head_MatMulNBits") == 8 and set(bits.values()) == {4}
    dequantized = q.dequantized_weights(out)
    new = q.params_with_dequantized(params, q.float_initializers(source), dequantized)
    expected = forward(new, IDS)
    assert np.abs(run(out, IDS) - expected).max() < 2e-6 * np.abs(expected).max()


def test_a_tied_lm_head_quantized_alone_cannot_be_matched(tmp_path):
    """The JAX model has one table for both: quantized in the LM head and float in the Gather
    is no model it can run; params_with_dequantized names the leaf. A float LM head is."""
    params = leaves()
    source = export(tmp_path / "f32", params)
    summary = q.quantize(source, tmp_path / "head", accuracy_level=1)
    assert "tied" in summary["skipped"]["embed_gather"]
    dequantized = q.dequantized_weights(tmp_path / "head")
    with pytest.raises(InputError, match="parameter embed: quantized in 'head_weight' but float"):
        q.params_with_dequantized(params, q.float_initializers(source), dequantized)

    summary = q.quantize(source, tmp_path / "float-head", accuracy_level=1, lm_head="float")
    assert summary["matmuls_quantized"] == 3 and "float" in summary["skipped"]["lm_head"]
    dequantized = q.dequantized_weights(tmp_path / "float-head")
    new = q.params_with_dequantized(params, q.float_initializers(source), dequantized)
    assert new["embed"] is params["embed"]
    expected = forward(new, IDS)
    assert (
        np.abs(run(tmp_path / "float-head", IDS) - expected).max() < 2e-6 * np.abs(expected).max()
    )


@pytest.mark.parametrize(
    "keywords, words",
    [
        ({"bits": 3}, "bits 3"),
        ({"block_size": 24}, "power of two"),
        ({"algorithm": "gptq"}, "not one of"),
        ({"format": "qdq"}, "not one of"),
        ({"algorithm": "hqq"}, "hqq is asymmetric"),
        ({"algorithm": "hqq", "symmetric": False, "bits": 8}, "refuses 8 bits"),
        ({"algorithm": "hqq", "symmetric": False, "format": "plain"}, "no DequantizeLinear"),
        ({"algorithm": "k_quant"}, "k_quant is asymmetric"),
        ({"lm_head": "int2"}, "lm_head"),
        ({"embeddings": True, "format": "plain"}, "GatherBlockQuantized only"),
        ({"embeddings": True, "algorithm": "hqq", "symmetric": False}, "float zero points"),
    ],
)
def test_what_onnx_runtime_cannot_do_is_refused_in_one_line(tmp_path, keywords, words):
    source = export(tmp_path / "f32", leaves())
    with pytest.raises(InputError, match=words) as refused:
        q.quantize(source, tmp_path / "out", **keywords)
    assert "\n" not in str(refused.value)


def test_an_untied_embedding_in_8_bits_and_k_quants_odd_blocks_are_refused(tmp_path):
    source = export(tmp_path / "f32", leaves(tied=False))
    with pytest.raises(InputError, match="Gather to 4 bits only"):
        q.quantize(source, tmp_path / "int8", bits=8, embeddings=True)
    folder, _ = matmul_folder(tmp_path / "odd", 96)  # 3 blocks of 32
    with pytest.raises(InputError, match="weight 'w' has K 96, an odd"):
        q.quantize(folder, tmp_path / "k", algorithm="k_quant", symmetric=False)


def test_excluded_weights_stay_float(tmp_path):
    source = export(tmp_path / "f32", leaves(tied=False))
    summary = q.quantize(source, tmp_path / "q", exclude=["o", "up_weight"])
    assert summary["skipped"]["o"] == summary["skipped"]["up"] == "excluded"
    assert set(q.dequantized_weights(tmp_path / "q")) == {"qkv_fused_weight", "head_weight"}


# params_with_dequantized on its own: synthetic leaves and "dequantized" values.


def synthetic():
    rng = np.random.default_rng(5)
    params = {
        ("attn", "q"): rng.standard_normal((64, 4, 16)).astype(np.float32),
        ("attn", "k"): rng.standard_normal((64, 2, 16)).astype(np.float32),
        ("attn", "v"): rng.standard_normal((64, 2, 16)).astype(np.float32),
        ("attn", "o"): rng.standard_normal((32, 64)).astype(np.float32),  # graph holds o.T
        ("mlp", "up"): rng.standard_normal((64, 48)).astype(np.float32),
        ("norm",): np.ones(64, np.float32),
    }
    qkv = np.concatenate([params["attn", n].reshape(64, -1) for n in "qkv"], axis=1)
    initializers = {"qkv": qkv, "o_t": params["attn", "o"].T.copy(), "up": params["mlp", "up"]}
    dequantized = {
        name: w + np.float32(0.25) * (i + 1) for i, (name, w) in enumerate(initializers.items())
    }
    return params, initializers, dequantized


def test_each_leaf_gets_its_columns_of_the_dequantized_weight():
    params, initializers, dequantized = synthetic()
    new = q.params_with_dequantized(params, initializers, dequantized)
    for name in "qkv":  # fused along N: the leaves' columns, each [64, heads * 16]
        np.testing.assert_array_equal(new["attn", name], params["attn", name] + np.float32(0.25))
    np.testing.assert_array_equal(new["attn", "o"], params["attn", "o"] + np.float32(0.5))
    np.testing.assert_array_equal(new["mlp", "up"], params["mlp", "up"] + np.float32(0.75))
    assert new["norm",] is params["norm",]
    assert all(new[p].shape == params[p].shape and new[p].dtype == np.float32 for p in params)


def test_a_weight_no_leaves_make_is_named():
    params, initializers, dequantized = synthetic()
    initializers["qkv"] = initializers["qkv"].copy()
    initializers["qkv"][:, 70] += 1  # k's columns are no leaf any more
    with pytest.raises(
        InputError, match=r"quantized weight 'qkv' \[64, 128\]: its columns from 64"
    ):
        q.params_with_dequantized(params, initializers, dequantized)
    with pytest.raises(InputError, match="'gone': not among the float initializers"):
        q.params_with_dequantized(params, {}, {"gone": dequantized["up"]})


def test_a_leaf_two_weights_make_differently_is_named():
    params, initializers, dequantized = synthetic()
    initializers["up_again"] = initializers["up"]
    dequantized["up_again"] = dequantized["up"] + 1
    with pytest.raises(InputError, match=r"quantized differently in 'up' and 'up_again'"):
        q.params_with_dequantized(params, initializers, dequantized)


@pytest.mark.parametrize("fmt", list(OPS))
def test_a_tied_table_is_quantized_in_both_ops_or_in_neither(tmp_path, fmt):
    """``embeddings=None`` (a variant's ``tied``): with MatMulNBits the Gather reads the LM
    head's quantized tensors; plain ONNX has no quantized Gather, so the LM head stays float.
    Either way the one JAX parameter has one set of values."""
    params = leaves()
    source = export(tmp_path / "f32", params)
    out = tmp_path / fmt
    summary = q.quantize(source, out, accuracy_level=1, format=fmt, embeddings=None)
    if fmt == "ort":
        assert "tied LM head" in summary["embeddings"]["as"]
    else:
        assert summary["lm_head"].startswith("float") and "embeddings" not in summary
    dequantized = q.dequantized_weights(out)
    new = q.params_with_dequantized(params, q.float_initializers(source), dequantized)
    expected = forward(new, IDS)
    assert np.abs(run(out, IDS) - expected).max() < 2e-6 * np.abs(expected).max()


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_weight_too_large_for_one_model_proto_is_quantized_by_column_slices(
    tmp_path, monkeypatch, symmetric
):
    """Past 2 GB a weight cannot go through ONNX Runtime's quantizer in one ModelProto
    (gpt-oss-20b's LM head): sliced by output columns, it comes out byte for byte as whole."""
    source, _ = matmul_folder(tmp_path / "f32", 96, n=40)
    whole = tmp_path / "whole"
    q.quantize(source, whole, accuracy_level=1, symmetric=symmetric)
    monkeypatch.setattr(q, "SLICE_BYTES", 96 * 40 * 4 // 3)  # three slices
    sliced = tmp_path / "sliced"
    q.quantize(source, sliced, accuracy_level=1, symmetric=symmetric)
    a, b = (onnx.load(str(f / ONNX_FILE)) for f in (whole, sliced))
    assert [n.op_type for n in b.graph.node] == ["MatMulNBits"]
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer} == {
        t.name: onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer
    }
    assert a.graph.node[0].attribute == b.graph.node[0].attribute
