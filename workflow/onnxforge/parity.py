"""Parity: ONNX Runtime against JAX, and JAX against the family's independent reference.

The same seeded token ids go through all three. A gate that does not hold fails the target;
the report is written first, so it can be read either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from onnxforge import metrics
from onnxforge.families import get_family


@dataclass(frozen=True)
class ParitySettings:
    dtype: str
    gates: dict[str, float]
    provider: str = "cpu"  # ONNX Runtime execution provider: cpu or cuda
    short_batch: int = 2
    short_tokens: int = 24
    long_tokens: int = 256
    decode_tokens: int = 8
    seed: int = 0


def parity_inputs(vocab_size: int, settings: ParitySettings) -> dict[str, np.ndarray]:
    """Seeded token ids: a short batch and one long sequence (RoPE errors hide in short ones)."""
    rng = np.random.default_rng(settings.seed)
    return {
        f"short_{settings.short_batch}x{settings.short_tokens}": rng.integers(
            0, vocab_size, (settings.short_batch, settings.short_tokens), dtype=np.int32
        ),
        f"long_1x{settings.long_tokens}": rng.integers(
            0, vocab_size, (1, settings.long_tokens), dtype=np.int32
        ),
    }


class OnnxModel:
    def __init__(self, path: Path, provider: str = "cpu"):
        import onnxruntime as ort

        if provider == "cuda":
            # onnxruntime-gpu finds the pip NVIDIA libraries only when asked to load them.
            ort.preload_dlls()
            providers = ["CUDAExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        if self.session.get_providers()[0] != providers[0]:
            raise RuntimeError(f"ONNX Runtime could not use {providers[0]} for {path}")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, token_ids: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: token_ids.astype(np.int32)})[0]


def greedy_decode(logits_fn, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy tokens by re-running the whole sequence each step (no cache to disagree on)."""
    tokens = prompt.astype(np.int32)
    generated = []
    for _ in range(steps):
        next_token = int(np.asarray(logits_fn(tokens))[0, -1].argmax())
        generated.append(next_token)
        tokens = np.concatenate([tokens, [[next_token]]], axis=1).astype(np.int32)
    return generated


def run_parity(
    family_name: str,
    download_dir: Path,
    stage_dir: Path,
    onnx_path: Path,
    settings: ParitySettings,
) -> dict[str, Any]:
    """Every comparison's metrics and the gate verdict, as the report records them."""
    family = get_family(family_name)
    config = family.read_config(stage_dir)
    dtype = jnp.dtype(settings.dtype)
    model = family.load(stage_dir, dtype)
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        jax_forward = jax.jit(lambda ids: nnx.merge(graphdef, state)(ids).astype(jnp.float32))
    else:
        jax_forward = jax.jit(lambda ids: model(ids).astype(jnp.float32))
    onnx_model = OnnxModel(onnx_path, settings.provider)

    inputs = parity_inputs(config.vocab_size, settings)
    jax_logits = {name: np.asarray(jax_forward(ids)) for name, ids in inputs.items()}
    onnx_logits = {name: onnx_model(ids).astype(np.float32) for name, ids in inputs.items()}
    reference_logits = dict(
        zip(
            inputs,
            family.reference_logits(download_dir, stage_dir, list(inputs.values())),
            strict=True,
        )
    )

    comparisons = {
        "onnx_vs_jax": {n: metrics.compare_logits(jax_logits[n], onnx_logits[n]) for n in inputs},
        "jax_vs_reference": {
            n: metrics.compare_logits(reference_logits[n], jax_logits[n]) for n in inputs
        },
    }
    failures = []
    summary = {}
    for name, per_input in comparisons.items():
        summary[name] = metrics.summarize(per_input)
        failures += [f"{name}: {f}" for f in metrics.check_gates(summary[name], settings.gates)]

    prompt = inputs[next(iter(inputs))][:1, :8]
    decode = {
        "prompt": prompt[0].tolist(),
        "onnx": greedy_decode(onnx_model, prompt, settings.decode_tokens),
        "jax": greedy_decode(jax_forward, prompt, settings.decode_tokens),
    }
    decode["agree"] = decode["onnx"] == decode["jax"]
    if not decode["agree"]:
        failures.append(f"greedy decode: ONNX {decode['onnx']} != JAX {decode['jax']}")

    return {
        "status": "FAIL" if failures else "PASS",
        "failures": failures,
        "dtype": settings.dtype,
        "gates": settings.gates,
        "inputs": {name: list(ids.shape) for name, ids in inputs.items()},
        "summary": summary,
        "comparisons": comparisons,
        "decode": decode,
    }
