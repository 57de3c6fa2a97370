"""Export runs what it wrote: before an export is complete, ONNX Runtime loads the saved model
and runs it once, so that a graph nothing can run is never handed to parity (or to a user).

The full-sequence graph runs one forward; the KV decoder a prefill and one decode step fed
with the prefill's cache. Feeds are read off the graph's own inputs (each cache input's static
heads and width: MLA's key and value widths differ), so any architecture's graph is run as
it was declared. A graph ONNX Runtime refuses fails the export in one line naming the node.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from onnxforge.core.errors import InputError
from onnxforge.graph import signature

PREFILL = 4  # tokens: ids 0..3, in every vocabulary
# How ONNX Runtime names the node: at load "Node (NAME) Op (...)", at run "node. Name:'NAME'".
_NODE = re.compile(r"Name:'([^']+)'|[Nn]ode \(([^)]+)\)")
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _refused(path: Path, what: str, err: Exception) -> InputError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    node = _NODE.search(str(err))
    where = f" at node {node.group(1) or node.group(2)}" if node else ""
    return InputError(
        f"{path}: ONNX Runtime refuses the exported graph{where} ({what}): {first}; the export "
        "is not kept. This is a fault of the export, not of the checkpoint: report it with "
        "the model's config.json"
    )


def _empty_cache(session) -> dict[str, np.ndarray]:
    """Each past_key_values input at past length 0, its other axes the graph's own sizes
    (batch 1)."""
    cache = {}
    for spec in session.get_inputs():
        if not spec.name.startswith("past_key_values."):
            continue
        _batch, heads, _past, width = spec.shape
        if spec.type == "tensor(bfloat16)":
            import ml_dtypes  # JAX's own bfloat16 for NumPy

            dtype = ml_dtypes.bfloat16
        else:
            dtype = _NUMPY.get(spec.type, np.float32)
        cache[spec.name] = np.zeros((1, heads, 0, width), dtype)
    return cache


def run_once(model_path: Path, decoder: str, dtype: str = "float32") -> dict[str, object]:
    """Load ``model_path`` in ONNX Runtime and run it; the shapes of what it gave. bfloat16
    runs on CUDA only (the CPU provider has no bfloat16 MatMul): without it, not run."""
    import onnxruntime as ort

    provider = "CPUExecutionProvider"
    if dtype == "bfloat16":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return {"not run": "bfloat16 needs ONNX Runtime's CUDA provider, which is not here"}
        provider = "CUDAExecutionProvider"
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a refusal is raised, not printed
    try:
        session = ort.InferenceSession(str(model_path), options, providers=[provider])
    except Exception as err:  # ONNX Runtime's own exception types (Fail, InvalidGraph, ...)
        raise _refused(model_path, "loading it", err) from None
    ids = np.arange(PREFILL, dtype=np.int64)[None, :]
    if decoder != "kv":
        try:
            (logits,) = session.run([signature.LOGITS], signature.feeds(ids))
        except Exception as err:
            raise _refused(model_path, f"a forward of {PREFILL} tokens", err) from None
        return {"forward": list(logits.shape)}
    cache = _empty_cache(session)
    layers = len(cache) // 2
    past = [
        (cache[signature.PAST_KEY.format(i)], cache[signature.PAST_VALUE.format(i)])
        for i in range(layers)
    ]
    shapes = {}
    for step, (tokens, start) in enumerate(((ids, 0), (np.array([[PREFILL]]), PREFILL))):
        length = start + tokens.shape[1]
        feeds = signature.kv_feeds(
            tokens, np.ones((1, length)), np.arange(start, length)[None, :], past
        )
        what = "the prefill" if step == 0 else "a decode step after the prefill"
        try:
            logits, *present = session.run(None, feeds)
        except Exception as err:
            raise _refused(model_path, what, err) from None
        past = list(zip(present[0::2], present[1::2], strict=True))
        shapes["prefill" if step == 0 else "decode"] = list(logits.shape)
    return shapes
