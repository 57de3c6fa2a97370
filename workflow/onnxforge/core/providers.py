"""ONNX Runtime execution providers a variant may ask for, and what each needs to run.

The config names a provider (``variants.<name>.provider``); parity opens its sessions here and
the Snakemake rules ask for GPUs only for the providers that use one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Provider:
    name: str  # as the config spells it
    onnxruntime: str  # ONNX Runtime's execution provider
    gpus: int  # GPUs a job using it asks the scheduler for


PROVIDERS = {
    p.name: p
    for p in (
        Provider("cpu", "CPUExecutionProvider", gpus=0),
        Provider("cuda", "CUDAExecutionProvider", gpus=1),
    )
}
DEFAULT = "cpu"


def gpus_for(provider: str) -> int:
    return PROVIDERS[provider].gpus


def onnx_session(
    path: Path, provider: str, threads: int | None = None, config: dict[str, str] | None = None
) -> Any:
    """An ONNX Runtime session on ``provider``, refusing a silent fallback to another one;
    ``config``: session config entries (a quantized plain graph's accuracy level)."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider].onnxruntime
    if provider == "cuda":
        # onnxruntime-gpu finds the pip NVIDIA libraries only when asked to load them.
        ort.preload_dlls()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), options, providers=[wanted])
    if session.get_providers()[0] != wanted:
        raise RuntimeError(f"ONNX Runtime could not use {wanted} for {path}")
    return session
