"""Parity's sides run one at a time: each lets go of its weights before the next loads."""

import dataclasses

import jax
import numpy as np

from onnxforge.driver import catalog
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.steps.parity import parity
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


def test_reference_decode_follows_jax_tokens_until_its_first_other_pick():
    """The reference's greedy tokens from one teacher-forced pass over prompt + JAX's tokens:
    equal while it picks JAX's token, cut after its first other pick (so the decode gate fails
    on a reference that disagrees, and names the step)."""
    prompt_length, vocab = 2, 5
    jax_tokens = [3, 1, 4]
    logits = np.zeros((1, prompt_length + len(jax_tokens), vocab), np.float32)
    for step, token in enumerate(jax_tokens):  # position p's logits pick the token at p + 1
        logits[0, prompt_length - 1 + step, token] = 1.0
    assert parity.reference_decode(logits, prompt_length, jax_tokens) == jax_tokens
    logits[0, prompt_length, :] = 0.0
    logits[0, prompt_length, 2] = 1.0  # the reference picks 2 where JAX picked 1
    assert parity.reference_decode(logits, prompt_length, jax_tokens) == [3, 2]


def test_diagnosis_runs_on_a_passing_target_only_when_always(
    tiny_checkpoint, tiny_stage, tiny_export
):
    """`parity.diagnosis.run: always`: a passing target's report holds the per-layer diagnosis
    of every comparison, naming no layer; the default (on_failure) leaves it out."""
    onnx = tiny_export / "model.onnx"
    always = dataclasses.replace(SETTINGS, diagnosis={**SETTINGS.diagnosis, "run": "always"})
    report, _ = parity.run_parity(FAMILY, tiny_checkpoint, tiny_stage, onnx, always, threads=1)
    assert report["status"] == "PASS" and report["failures"] == []
    comparisons = report["diagnosis"]["comparisons"]
    assert set(comparisons) == {"onnx_vs_jax", "jax_vs_reference"}
    layers = FAMILY.read_config(tiny_stage).num_hidden_layers
    for found in comparisons.values():
        assert found["first_divergence"] is None
        assert found["sentence"] == (
            "no divergence: every layer, the final norm and the LM head within tolerance"
        )
        assert [entry["layer"] for entry in found["layers"]] == list(range(layers))
    assert SETTINGS.diagnosis["run"] == "on_failure"
    report, _ = parity.run_parity(FAMILY, tiny_checkpoint, tiny_stage, onnx, SETTINGS, threads=1)
    assert report["status"] == "PASS" and "diagnosis" not in report


def test_the_logits_tap_is_an_alias_even_when_the_weights_overflowed():
    """Overflowing weights make NaN logits: the LM head's tap is still the logits output (one
    value with two names would break the debug export), and a tap that differs is not."""
    logits = np.array([[[1.0, np.nan], [np.inf, 2.0]]], np.float32)
    taps = {
        "final.lm_head": logits.copy(),
        "final.norm": np.ones((1, 2, 4), np.float32),
        "layer.0": logits + 1.0,
    }
    assert parity.logits_aliases(taps, logits) == ["final.lm_head"]
