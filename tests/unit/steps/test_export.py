"""The exported ONNX: symbolic batch and sequence, weights in external data, equal to JAX."""

import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx

from onnxforge.core import params_store
from onnxforge.families.gpt_oss import FAMILY


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
