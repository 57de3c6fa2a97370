"""passes.einsum_to_matmul: the Einsums jax2onnx writes become MatMul (or Mul, where
elementwise) with the same numbers, at more than one size of the symbolic axes; what it cannot
express stays Einsum."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxforge.graph.passes import einsum_to_matmul

# (equation, lhs shape, rhs shape, which operand is a weight) with symbolic batch ("B") and
# sequence ("S") axes on the runtime operands.
CASES = {
    "projection": ("abc,cd->abd", ("B", "S", 8), (8, 6), "rhs"),
    "projection to heads": ("bse,ehd->bshd", ("B", "S", 8), (8, 3, 4), "rhs"),
    "heads to embedding": ("bshd,hde->bse", ("B", "S", 3, 4), (3, 4, 8), "rhs"),
    "weight first (tied logits)": ("ve,bse->bsv", (10, 8), ("B", "S", 8), "lhs"),
    "expert batch": ("bseh,ehm->bsem", ("B", "S", 4, 8), (4, 8, 5), "rhs"),
    "attention scores": ("btkgd,bskd->bkgts", ("B", "S", 2, 3, 4), ("B", "S", 2, 4), None),
    "attention values": ("bkgts,bskd->btkgd", ("B", 2, 3, "S", "S"), ("B", "S", 2, 4), None),
    # dot_general's order (jnp.einsum transposes after it): tokens before the query group
    "attention scores, tokens first": (
        "btkgd,bskd->bktgs",
        ("B", "S", 2, 3, 4),
        ("B", "S", 2, 4),
        None,
    ),
    "expert batch, two free axes": ("ebsh,ehm->ebsm", (4, "B", "S", 8), (4, 8, 5), "rhs"),
    "to one value per row": ("bsd,d->bs", ("B", "S", 8), (8,), "rhs"),
}


def einsum_model(equation: str, lhs_shape, rhs_shape, weight: str | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = {}
    for side, shape in (("lhs", lhs_shape), ("rhs", rhs_shape)):
        if side == weight:
            values[side] = ir.Value(
                name=f"{side}_weight",
                const_value=ir.tensor(rng.standard_normal(shape).astype(np.float32)),
            )
        else:
            values[side] = ir.val(side, ir.DataType.FLOAT, list(shape))
    node = ir.node("Einsum", [values["lhs"], values["rhs"]], {"equation": equation})
    node.outputs[0].name = "out"
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(
        inputs=[v for side, v in values.items() if side != weight],
        outputs=[node.outputs[0]],
        nodes=[node],
        initializers=[v for side, v in values.items() if side == weight],
        opset_imports={"": 21},
        name="einsum",
    )
    return ir.Model(graph, ir_version=10)


def run(model: ir.Model, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)[0]


def feeds_for(model: ir.Model, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        v.name: rng.standard_normal(
            [sizes[d.value] if isinstance(d, ir.SymbolicDim) else d for d in v.shape]
        ).astype(np.float32)
        for v in model.graph.inputs
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_einsum_becomes_matmul_with_the_same_numbers(case):
    equation, lhs_shape, rhs_shape, weight = CASES[case]
    before = einsum_model(equation, lhs_shape, rhs_shape, weight)
    after = einsum_model(equation, lhs_shape, rhs_shape, weight)
    assert einsum_to_matmul(after) == 1
    ops = [node.op_type for node in after.graph]
    assert "Einsum" not in ops and "MatMul" in ops, ops
    if weight is not None:  # the weight is laid out once, at rewrite time
        assert "Transpose" not in [n.op_type for n in after.graph if n.inputs[0].is_initializer()]
    for seed, sizes in enumerate(({"B": 2, "S": 5}, {"B": 1, "S": 1}, {"B": 3, "S": 7})):
        feeds = feeds_for(before, sizes, seed)
        expected, got = run(before, feeds), run(after, feeds)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_projection_needs_no_runtime_transpose_and_its_weight_is_2d():
    model = einsum_model("abc,cd->abd", ("B", "S", 8), (8, 6), "rhs")
    einsum_to_matmul(model)
    assert [node.op_type for node in model.graph] == ["MatMul"]
    # ONNX Runtime pre-packs only a 2-D MatMul weight
    (weight,) = model.graph.initializers.values()
    assert weight.const_value.shape == (8, 6)


def test_attention_scores_multiply_over_the_tokens_not_the_query_group():
    """``btkgd,bskd->bktgs``: the MatMul's rows are the tokens (symbolic), its loop the group."""
    model = einsum_model("btkgd,bskd->bktgs", ("B", "S", 2, 3, 4), ("B", "S", 2, 4), None)
    einsum_to_matmul(model)
    (matmul,) = [node for node in model.graph if node.op_type == "MatMul"]
    transpose = matmul.inputs[0].producer()
    assert list(transpose.attributes.get_ints("perm")) == [0, 2, 3, 1, 4]  # b k g t d


@pytest.mark.parametrize(
    "equation,lhs_shape,rhs_shape,weight",
    [
        ("...k,...k->...k", ("B", "S", 8), (1, 1, 8), "rhs"),  # jax2onnx's norm scale
        ("bsk,bsk->bsk", ("B", "S", 8), ("B", "S", 8), None),
    ],
)
def test_an_elementwise_einsum_becomes_mul(equation, lhs_shape, rhs_shape, weight):
    before = einsum_model(equation, lhs_shape, rhs_shape, weight)
    after = einsum_model(equation, lhs_shape, rhs_shape, weight)
    assert einsum_to_matmul(after) == 1
    assert [node.op_type for node in after.graph] == ["Mul"]
    for seed, sizes in enumerate(({"B": 2, "S": 5}, {"B": 1, "S": 1})):
        feeds = feeds_for(before, sizes, seed)
        np.testing.assert_array_equal(run(after, feeds), run(before, feeds))


@pytest.mark.parametrize(
    "equation,lhs_shape,rhs_shape",
    [
        ("abc,cd->ad", ("B", "S", 8), (8, 6)),  # b summed within one operand
        ("...c,cd->...d", ("B", "S", 8), (8, 6)),  # ellipsis
        ("abb,bd->abd", ("B", 8, 8), (8, 6)),  # a diagonal
    ],
)
def test_what_matmul_cannot_express_stays_einsum(equation, lhs_shape, rhs_shape):
    model = einsum_model(equation, lhs_shape, rhs_shape, "rhs")
    assert einsum_to_matmul(model) == 0
    assert [node.op_type for node in model.graph] == ["Einsum"]


def sibling_model() -> ir.Model:
    """q, k and v of one input, and an unrelated MatMul of another."""
    rng = np.random.default_rng(0)
    x = ir.val("x", ir.DataType.FLOAT, ["B", "S", 8])
    other = ir.val("other", ir.DataType.FLOAT, ["B", 8])
    nodes, weights = [], []
    for name, source, width in (("q", x, 8), ("k", x, 4), ("v", x, 4), ("o", other, 3)):
        weight = ir.Value(
            name=f"{name}_weight",
            const_value=ir.tensor(rng.standard_normal((8, width)).astype(np.float32)),
        )
        node = ir.node("MatMul", [source, weight], name=name)
        node.outputs[0].name, node.outputs[0].type = name, ir.TensorType(ir.DataType.FLOAT)
        nodes.append(node)
        weights.append(weight)
    outputs = [node.outputs[0] for node in nodes]
    graph = ir.Graph([x, other], outputs, nodes=nodes, initializers=weights,
                     opset_imports={"": 21}, name="siblings")  # fmt: skip
    return ir.Model(graph, ir_version=10)


def test_sibling_matmuls_become_one_matmul_and_a_split_with_the_same_numbers():
    from onnxforge.graph.passes import fuse_sibling_matmuls

    after = sibling_model()
    assert fuse_sibling_matmuls(after) == 2
    ops = [node.op_type for node in after.graph]
    assert ops.count("MatMul") == 2 and ops.count("Split") == 1
    assert "q_weight" not in after.graph.initializers  # one copy of the weights
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((2, 5, 8)).astype(np.float32),
        "other": rng.standard_normal((2, 8)).astype(np.float32),
    }
    before = ir.to_proto(sibling_model()).SerializeToString()
    expected = ort.InferenceSession(before).run(None, feeds)
    got = ort.InferenceSession(ir.to_proto(after).SerializeToString()).run(None, feeds)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)


def interleaved_model() -> ir.Model:
    """x @ (gate and up interleaved by Unsqueeze, Concat, Reshape, Transpose), as the MoE op's
    fc1 is laid out from two expert kernels."""
    rng = np.random.default_rng(0)
    x = ir.val("x", ir.DataType.FLOAT, ["B", 6])
    kernels = [
        ir.Value(name=n, const_value=ir.tensor(rng.standard_normal((4, 3)).astype(np.float32)))
        for n in ("gate", "up")
    ]
    consts = {
        "last": np.asarray([-1], np.int64),
        "pairs": np.asarray([0, -1], np.int64),
    }
    values = {k: ir.Value(name=k, const_value=ir.tensor(v)) for k, v in consts.items()}
    nodes = [ir.node("Unsqueeze", [kernel, values["last"]]) for kernel in kernels]
    nodes.append(ir.node("Concat", [n.outputs[0] for n in nodes], {"axis": -1}))
    nodes.append(ir.node("Reshape", [nodes[-1].outputs[0], values["pairs"]]))  # [4, 6]
    nodes.append(ir.node("Transpose", [nodes[-1].outputs[0]], {"perm": [1, 0]}))  # [6, 4]
    nodes.append(ir.node("MatMul", [x, nodes[-1].outputs[0]]))
    out = nodes[-1].outputs[0]
    out.name, out.type = "out", ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [out], nodes=nodes, initializers=[*kernels, *values.values()],
                     opset_imports={"": 21}, name="interleaved")  # fmt: skip
    return ir.Model(graph, ir_version=10)


def test_layout_ops_over_weights_fold_into_one_initializer():
    from onnxforge.graph.passes import fold_constant_layouts

    after = interleaved_model()
    assert fold_constant_layouts(after) == 1
    assert [node.op_type for node in after.graph] == ["MatMul"]
    assert not {"gate", "up"} & set(after.graph.initializers)  # one copy of the weights
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    before = ir.to_proto(interleaved_model()).SerializeToString()
    expected = ort.InferenceSession(before).run(None, {"x": x})[0]
    got = ort.InferenceSession(ir.to_proto(after).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def reshape_chain_model() -> ir.Model:
    """[B, S, 8]: split into heads and packed back (no change at all), then merged into rows
    (a real change, which stays)."""
    x = ir.val("x", ir.DataType.FLOAT, ["B", "S", 8])
    targets = {
        name: ir.Value(name=name, const_value=ir.tensor(np.asarray(t, np.int64)))
        for name, t in (("heads", [0, 0, 2, 4]), ("packed", [0, 0, -1]), ("rows", [-1, 8]))
    }
    heads = ir.node("Reshape", [x, targets["heads"]])
    heads.outputs[0].shape = ir.Shape(["B", "S", 2, 4])
    packed = ir.node("Reshape", [heads.outputs[0], targets["packed"]])
    relu = ir.node("Relu", [packed.outputs[0]])
    rows = ir.node("Reshape", [relu.outputs[0], targets["rows"]])
    out = rows.outputs[0]
    out.name, out.type = "out", ir.TensorType(ir.DataType.FLOAT)
    nodes, weights = [heads, packed, relu, rows], list(targets.values())
    graph = ir.Graph([x], [out], nodes=nodes, initializers=weights, opset_imports={"": 21})
    relu.outputs[0].shape = ir.Shape(["B", "S", 8])
    return ir.Model(graph, ir_version=10)


def test_a_reshape_chain_that_changes_nothing_is_dropped_and_a_real_one_stays():
    from onnxforge.graph.passes import collapse_reshapes

    after = reshape_chain_model()
    assert collapse_reshapes(after) == 1
    assert [node.op_type for node in after.graph] == ["Relu", "Reshape"]
    assert set(after.graph.initializers) == {"rows"}  # the dropped targets are gone too
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    before = ir.to_proto(reshape_chain_model()).SerializeToString()
    expected = ort.InferenceSession(before).run(None, {"x": x})[0]
    got = ort.InferenceSession(ir.to_proto(after).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)
