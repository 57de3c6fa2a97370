"""Parity's sides run one at a time: each lets go of its weights before the next loads."""

import jax
import numpy as np

from onnxforge import catalog, parity
from onnxforge.families.gpt_oss import FAMILY
from registry import CONFIG, F32

SETTINGS = parity.ParitySettings(
    **catalog.parity_settings(CONFIG, FAMILY.examples[0].name, "hf", F32)
)


def test_jax_side_frees_its_weights(tiny_stage):
    live = {id(a) for a in jax.live_arrays()}
    inputs, outputs = parity.jax_outputs(FAMILY, tiny_stage, SETTINGS)
    assert [a for a in jax.live_arrays() if id(a) not in live] == []
    assert set(outputs.logits) == set(inputs)
    assert all(isinstance(v, np.ndarray) for v in outputs.logits.values())
    assert len(outputs.decode) == SETTINGS.decode_tokens


def test_onnx_side_agrees_with_jax_side(tiny_stage, tiny_export):
    inputs, jax_side = parity.jax_outputs(FAMILY, tiny_stage, SETTINGS)
    onnx_side = parity.onnx_outputs(tiny_export / "model.onnx", inputs, SETTINGS, threads=1)
    assert onnx_side.decode == jax_side.decode
    for name, logits in onnx_side.logits.items():
        np.testing.assert_allclose(logits, jax_side.logits[name], atol=1e-4)
