"""The exported ONNX: symbolic batch and sequence, weights in external data, equal to JAX."""

import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx

from onnxforge.core import params_store, paths
from onnxforge.core.errors import InputError
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.steps.export import smoke_run


def test_symbolic_batch_and_sequence(tiny_export):
    model = onnx.load(str(tiny_export / "model.onnx"), load_external_data=False)
    (ids,) = model.graph.input
    dims = [d.dim_param for d in ids.type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_weights_live_in_external_data(tiny_export):
    model = onnx.load(str(tiny_export / "model.onnx"), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external
    assert all(t.external_data[0].value == "model.onnx.data" for t in external)
    inline_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    assert inline_bytes < 64 * 1024  # only small constants stay inside model.onnx
    assert (tiny_export / "model.onnx.data").stat().st_size > 100_000


@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 17), (1, 100)])
def test_onnx_runtime_matches_jax_for_any_shape(tiny_stage, tiny_export, batch, seq):
    config = FAMILY.read_config(tiny_stage)
    model = params_store.load_into(
        nnx.eval_shape(lambda: FAMILY.build(config, jnp.float32)),
        tiny_stage / "params",
        jnp.float32,
    )
    ids = np.random.default_rng(seq).integers(0, config.vocab_size, (batch, seq), dtype=np.int32)
    session = ort.InferenceSession(
        str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {"input_ids": ids})
    np.testing.assert_allclose(logits, np.asarray(model(jnp.asarray(ids))), atol=1e-4)


def test_export_runs_what_it_wrote(tiny_export):
    """The full-sequence graph ran one forward before the export was complete."""
    shapes = smoke_run.run_once(tiny_export / paths.ONNX_FILE, "full")
    assert shapes["forward"][:2] == [1, smoke_run.PREFILL]


@pytest.mark.parametrize("static", [True, False])
def test_a_graph_onnx_runtime_refuses_fails_the_export_naming_the_node(tmp_path, static):
    """A MatMul whose sizes do not agree (what MaxText's GPT-OSS KV export once wrote): at
    load when its shapes are static, at the first run when they are symbolic."""
    from onnx import TensorProto, helper, numpy_helper

    length = smoke_run.PREFILL if static else "sequence"
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids", "axis"], ["column"]),
            helper.make_node(
                "MatMul", ["column", "w"], ["logits"], name="node_Einsum_255_MatMul_34"
            ),
        ],
        "broken",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, length])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([-1], np.int64), "axis"),
            numpy_helper.from_array(np.ones((3, 2), np.float32), "w"),
        ],
    )
    path = tmp_path / paths.ONNX_FILE
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(InputError) as refused:
        smoke_run.run_once(path, "full")
    message = str(refused.value)
    assert "refuses the exported graph at node node_Einsum_255_MatMul_34" in message
    assert "\n" not in message
