"""Our replacements of MaxText code (runtime.py), against MaxText's own, in the maxtext
environment (one process, ~30 s): the same numbers, and what ONNX Runtime takes."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from onnxforge.core import checkout

MAXTEXT_PYTHON = checkout.local_python("maxtext", REPO)


def run_in_maxtext(script: str, done_line: str) -> None:
    """``script`` in the maxtext environment (one process); it must print ``done_line``."""
    if not MAXTEXT_PYTHON.exists():
        pytest.fail(f"{MAXTEXT_PYTHON} is missing: run `make env-maxtext`", pytrace=False)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [MAXTEXT_PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done_line in done.stdout, done.stdout + done.stderr[-3000:]


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
    run_in_maxtext(YARN_CHECK, "yarn ok")


REGISTRY_CHECK = r"""
import importlib
from onnxforge.families.maxtext import decoder, patches, runtime, sparse_moe  # registers all

def current(target):
    owner, name = patches._owner(target)
    return getattr(owner, name)

assert len(patches.PATCHES) == 16, sorted(patches.PATCHES)
assert all(p.why and p.group in patches.GROUPS for p in patches.PATCHES.values())
own = {target: current(target) for target in patches.PATCHES}
runtime.patch_for_export(); decoder.patch_for_cache(); sparse_moe.patch_sparse()
runtime.patch_for_export()  # idempotent: the originals stay MaxText's own
for target, patch in patches.PATCHES.items():
    assert current(target) is patch.replacement, target
    assert patches.original_of(patch.replacement) is own[target] or patch.target.endswith(
        "attend_on_embedding"), target
patches.restore()
assert all(current(target) is own[target] for target in patches.PATCHES)
assert patches.applied() == []
print("registry ok")
"""


@pytest.mark.maxtext
def test_every_maxtext_patch_is_registered_applied_once_and_restored():
    """The 16 attributes onnxforge replaces in MaxText: one registry (target, replacement,
    why), applied by group, idempotent, and MaxText's own code back after ``restore``."""
    run_in_maxtext(REGISTRY_CHECK, "registry ok")
