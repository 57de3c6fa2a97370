"""Our replacements of MaxText code (runtime.py), against MaxText's own, in the maxtext
environment (one process, ~30 s): the same numbers, and what ONNX Runtime takes."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from onnxforge.core import checkout

MAXTEXT_PYTHON = checkout.local_python("maxtext", REPO)

YARN_CHECK = r"""
import itertools
import numpy as np
import jax.numpy as jnp
from maxtext.layers import embeddings
from onnxforge.families.maxtext import runtime

original = embeddings.YarnRotaryEmbedding.__call__
runtime.patch_for_export()
assert embeddings.YarnRotaryEmbedding.__call__ is runtime._yarn_in_real_arithmetic
rng = np.random.default_rng(0)
inputs = jnp.asarray(rng.normal(size=(2, 40, 3, 16)), jnp.float32)
position = jnp.asarray(np.tile(np.arange(40), (2, 1)) + np.array([[0], [7]]), jnp.int32)
for interleave, pairwise, scaling in itertools.product([True, False], [True, False], [True, False]):
    if pairwise and not interleave:
        continue
    rope = embeddings.YarnRotaryEmbedding(
        embedding_dims=16, mesh=None, max_position_embeddings=128,
        original_max_position_embeddings=16, rope_theta=10000.0, rope_factor=4.0,
        fprop_dtype=jnp.float32, interleave=interleave, pairwise=pairwise,
        attention_scaling=scaling,
    )
    want = np.asarray(original(rope, inputs, position))
    got = np.asarray(rope(inputs, position))
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
print("yarn ok")
"""


@pytest.mark.maxtext
def test_yarn_in_real_arithmetic_equals_maxtexts_complex_rotation():
    if not MAXTEXT_PYTHON.exists():
        pytest.fail(f"{MAXTEXT_PYTHON} is missing: run `make env-maxtext`", pytrace=False)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [MAXTEXT_PYTHON, "-c", YARN_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "yarn ok" in done.stdout, done.stdout + done.stderr[-3000:]
