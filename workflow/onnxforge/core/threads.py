"""How many threads a step may use: the rule's ``threads``, passed as ``--threads``.

Set before the heavy imports: ONNX Runtime's sessions, torch (OMP_NUM_THREADS) and our own
pools (the MXFP4 decoder) follow it. XLA's CPU client sizes its pool itself.
"""

from __future__ import annotations

import os

ENV = "ONNXFORGE_THREADS"


def use(count: int | None) -> None:
    if count:
        os.environ[ENV] = str(count)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(count)


def available() -> int:
    if os.environ.get(ENV, "").isdigit():
        return max(1, int(os.environ[ENV]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
