"""Which ONNX operators an export may use (a variant's ``ops``), read by the lowerings of our
JAX primitives while jax2onnx traces.

- ``plain``: standard ONNX only, which every runtime and provider runs.
- ``ort``: ONNX Runtime's fused ``com.microsoft`` operators where a primitive has one: ``MoE``
  for sparse experts (``moe``), ``GroupQueryAttention`` for a KV step's attention
  (``graph.attention``), and ONNX's own ``RotaryEmbedding`` (opset 23) for RoPE. What GenAI's
  model builder writes; ONNX Runtime's CPU and CUDA providers (and so GenAI and Optimum's ORT
  classes) run them.

Both are exported and gated the same way (variants ``f32-kv`` and ``f32-kv-plain``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

KINDS = ("plain", "ort")
CONTRIB_DOMAIN = "com.microsoft"
DEFAULT_OPSET = 23  # the schema's default
# (kind, the export's opset) of the trace in progress.
_OPS: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar(
    "onnxforge_ops", default=("plain", DEFAULT_OPSET)
)


@contextlib.contextmanager
def ops(kind: str, opset: int = DEFAULT_OPSET) -> Iterator[None]:
    """Trace (export) with our primitives lowered to ``kind``'s operators, at ``opset``."""
    if kind not in KINDS:
        raise ValueError(f"unknown ops {kind!r}; expected one of {KINDS}")
    token = _OPS.set((kind, opset))
    try:
        yield
    finally:
        _OPS.reset(token)


def fused(since: int = 0) -> bool:
    """Whether the trace in progress may use fused operators: ONNX Runtime's, and standard
    ones that exist ``since`` an opset (e.g. RotaryEmbedding, 23) where the export's has them."""
    kind, opset = _OPS.get()
    return kind == "ort" and opset >= since
