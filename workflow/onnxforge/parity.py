"""Parity: ONNX Runtime against JAX, and JAX against the family's independent reference.

The same seeded token ids go through all three. A gate that does not hold fails the target;
the report is written first, so it can be read either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import metrics, providers, signature
from onnxforge.families.base import Family


@dataclass(frozen=True)
class ParitySettings:
    """What config.yaml says for one target (catalog.parity_settings): no defaults here, the
    schema holds them."""

    dtype: str
    gates: dict[str, float]
    provider: str
    short_batch: int
    short_tokens: int
    long_tokens: int
    decode_tokens: int
    seed: int


def parity_inputs(vocab_size: int, settings: ParitySettings) -> dict[str, np.ndarray]:
    """Seeded token ids: a short batch and one long sequence (RoPE errors hide in short ones)."""
    rng = np.random.default_rng(settings.seed)
    shapes = {
        f"short_{settings.short_batch}x{settings.short_tokens}": (
            settings.short_batch,
            settings.short_tokens,
        ),
        f"long_1x{settings.long_tokens}": (1, settings.long_tokens),
    }
    return {
        name: rng.integers(0, vocab_size, shape, dtype=signature.INPUT_DTYPE)
        for name, shape in shapes.items()
    }


class OnnxModel:
    def __init__(self, path: Path, provider: str, threads: int | None = None):
        self.session = providers.onnx_session(path, provider, threads)

    def __call__(self, token_ids: np.ndarray) -> np.ndarray:
        return self.session.run([signature.LOGITS], signature.feeds(token_ids))[0]


def greedy_decode(logits_fn, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy tokens without a cache (nothing to disagree on), on one fixed shape: the prompt
    is padded to its final length, and a causal model's logits at a position do not depend on
    what follows it. One shape means one JAX compilation instead of one per step."""
    length = prompt.shape[1]
    tokens = np.zeros((1, length + steps), signature.INPUT_DTYPE)
    tokens[:, :length] = prompt
    for position in range(length, length + steps):
        logits = np.asarray(logits_fn(tokens))
        tokens[0, position] = int(logits[0, position - 1].argmax())
    return tokens[0, length:].tolist()


def run_parity(
    family: Family,
    download_dir: Path,
    stage_dir: Path,
    onnx_path: Path,
    settings: ParitySettings,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every comparison's metrics and the gate verdict, as the report records them."""
    import jax
    import jax.numpy as jnp

    model = family.load(stage_dir, jnp.dtype(settings.dtype))
    apply = jax.jit(lambda params, ids: model.apply(params, ids).astype(jnp.float32))

    def jax_forward(ids: np.ndarray) -> np.ndarray:
        return np.asarray(apply(model.params, ids))

    onnx_model = OnnxModel(onnx_path, settings.provider, threads)

    inputs = parity_inputs(model.vocab_size, settings)
    jax_logits = {name: jax_forward(ids) for name, ids in inputs.items()}
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
        "provider": settings.provider,
        "gates": settings.gates,
        "inputs": {name: list(ids.shape) for name, ids in inputs.items()},
        "summary": summary,
        "comparisons": comparisons,
        "decode": decode,
    }
