"""The streaming MaxText save (families/maxtext/checkpoint.py), in the maxtext environment (one
process, ~20 s): MaxText's own saver writes ``Deferred`` parameters one at a time, never
holding an earlier one while it reads the next, and what it wrote reads back, whole or one
parameter at a time, as what was loaded."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from onnxforge.core import checkout

MAXTEXT_PYTHON = checkout.local_python("maxtext", REPO)

STREAMING_CHECK = r"""
import sys, tempfile, weakref
from pathlib import Path
import numpy as np
from onnxforge.core.errors import InputError
from onnxforge.families.maxtext import checkpoint

rng = np.random.default_rng(0)
values = {
    ("decoder", f"layers_{i}", "mlp", "wi", "kernel"): rng.normal(size=(64, 96)).astype(np.float32)
    for i in range(4)
}
values[("token_embedder", "embedding")] = rng.normal(size=(32, 64)).astype(np.float32)
values[("decoder", "norm", "scale")] = rng.normal(size=(64,)).astype(np.float16)  # kept float16
in_memory = ("token_embedder", "embedding")  # a converter's eager array: saved as it is
held, loads = [], []

def loader(path):
    def load():
        alive = [p for p, ref in held if ref() is not None]
        assert not alive, f"loading {path} while {alive} is still held"
        array = values[path].copy()
        held.append((path, weakref.ref(array)))
        loads.append(path)
        return array
    return load

tree = {}
for path, value in values.items():
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value if path == in_memory else checkpoint.deferred(
        loader(path), value.shape, value.dtype, "/".join(path))
with tempfile.TemporaryDirectory() as scratch:
    checkpoint.save(tree, Path(scratch) / "c")
    assert sorted(loads) == sorted(p for p in values if p != in_memory), loads
    whole = checkpoint.flatten(checkpoint.load(Path(scratch) / "c"))
    each = dict(checkpoint.load_each(Path(scratch) / "c"))
    assert whole.keys() == each.keys() == values.keys(), (whole.keys(), each.keys())
    for path, value in values.items():
        np.testing.assert_array_equal(whole[path], value)
        np.testing.assert_array_equal(each[path], value)
        assert each[path].dtype == value.dtype

    wrong = {"decoder": {"w": checkpoint.deferred(lambda: np.zeros((3, 5), np.float32),
                                                  (3, 4), np.float32, "decoder/w")}}
    try:
        checkpoint.save(wrong, Path(scratch) / "wrong")
    except InputError as err:
        assert "decoder/w" in str(err) and "(3, 5)" in str(err) and "(3, 4)" in str(err), err
    else:
        sys.exit("a parameter of the wrong shape was saved")
print("ok")
"""


@pytest.mark.maxtext
def test_save_streams_deferred_parameters_one_at_a_time_and_reads_them_back():
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [MAXTEXT_PYTHON, "-c", STREAMING_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


class _Lazy:
    """What to_maxtext's lazy tree holds: a shape, a dtype and values on request."""

    def __init__(self, values):
        self.values, self.shape, self.dtype = values, values.shape, values.dtype

    def __array__(self, dtype=None, copy=None):
        return self.values


def test_the_staged_tree_holds_the_routing_bias_under_params_and_refuses_other_collections():
    import numpy as np

    from onnxforge.core.errors import InputError
    from onnxforge.families.maxtext import checkpoint, convert

    bias, kernel = np.arange(4.0, dtype=np.float32), np.ones((2, 3), np.float32)
    tree = convert._staged_tree(
        {
            "params": {"decoder": {"gate": {"kernel": _Lazy(kernel)}}},
            "MoEBiasVar": {"decoder": {"gate": {"bias": _Lazy(bias)}}},
        }
    )
    gate = tree["decoder"]["gate"]
    assert isinstance(gate["bias"], checkpoint.Deferred) and gate["bias"].shape == (4,)
    np.testing.assert_array_equal(checkpoint.materialize(gate["bias"]), bias)
    np.testing.assert_array_equal(checkpoint.materialize(gate["kernel"]), kernel)
    with pytest.raises(InputError, match=r"collections \['Tid2EidVar'\]"):
        convert._staged_tree({"params": {}, "Tid2EidVar": {"table": _Lazy(bias)}})
