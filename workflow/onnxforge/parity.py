"""Parity: ONNX Runtime against JAX, and JAX against the family's independent reference.

The same seeded token ids go through all three. A gate that does not hold fails the target;
the report is written first, so it can be read either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
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
    generate_tokens: int  # the generation gates' greedy decode (decoder kv)
    decoder: str  # the variant's: full, or kv (the KV-cache decoder; adds generation gates)


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


def decode_prompt(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The greedy decode's prompt: the first 8 tokens of the first input's first row."""
    return inputs[next(iter(inputs))][:1, :8]


@dataclass
class Outputs:
    """What one implementation gives on the parity inputs: logits per input and greedy tokens
    (and for a KV export, its generation gates' side)."""

    logits: dict[str, np.ndarray]
    decode: list[int]
    generation: Any = None


def run_model(logits_fn, inputs: dict[str, np.ndarray], decode_tokens: int) -> Outputs:
    # Copies: a view of a JAX array would keep its buffer alive past the model.
    logits = {name: np.array(logits_fn(ids), np.float32) for name, ids in inputs.items()}
    return Outputs(logits, greedy_decode(logits_fn, decode_prompt(inputs), decode_tokens))


def jax_outputs(
    family: Family, stage_dir: Path, settings: ParitySettings
) -> tuple[dict[str, np.ndarray], Outputs]:
    """The parity inputs (seeded ids within the model's vocabulary) and JAX's outputs on them.

    The model, its weights and its compiled programs are let go before returning: ONNX
    Runtime and the reference each load their own copy of the weights next, one at a time.
    """
    import jax

    inputs, outputs = _run_jax(family, stage_dir, settings)
    jax.clear_caches()  # its compiled programs
    release_memory()
    return inputs, outputs


def _run_jax(
    family: Family, stage_dir: Path, settings: ParitySettings
) -> tuple[dict[str, np.ndarray], Outputs]:
    import jax
    import jax.numpy as jnp

    model = family.load(stage_dir, jnp.dtype(settings.dtype))
    apply = jax.jit(lambda params, ids: model.apply(params, ids).astype(jnp.float32))
    inputs = parity_inputs(model.vocab_size, settings)
    return inputs, run_model(lambda ids: apply(model.params, ids), inputs, settings.decode_tokens)


def release_memory() -> None:
    """Collect what a finished side left, and hand glibc's free pages back to the system: its
    allocator keeps them otherwise, and the next side's weights would come on top."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def onnx_outputs(
    onnx_path: Path,
    inputs: dict[str, np.ndarray],
    settings: ParitySettings,
    threads: int | None,
    window: int = 0,
) -> Outputs:
    """ONNX Runtime's outputs; its session (and its copy of the weights) ends on return. A KV
    export's logits are its prefill's; it also runs the generation gates' side (``window``:
    the model's sliding window, which their decode runs past)."""
    session = providers.onnx_session(onnx_path, settings.provider, threads)
    if settings.decoder != "kv":

        def logits_fn(token_ids: np.ndarray) -> np.ndarray:
            return session.run([signature.LOGITS], signature.feeds(token_ids))[0]

        return run_model(logits_fn, inputs, settings.decode_tokens)

    from onnxforge import generation

    runner = generation.KVRunner(session)
    outputs = run_model(runner.prefill, inputs, settings.decode_tokens)
    vocab = next(iter(outputs.logits.values())).shape[-1]
    prompt = decode_prompt(inputs).astype(np.int64)
    outputs.generation = generation.run_onnx(runner, prompt, settings, window, vocab)
    return outputs


def sliding_window(stage_dir: Path) -> int:
    """The stage config's sliding window (0: none), for the generation gates' decode."""
    from onnxforge.families.base import read_config_json

    config = read_config_json(stage_dir)
    layer_types = config.get("layer_types") or []
    if layer_types and "sliding_attention" not in layer_types:
        return 0
    return int(config.get("sliding_window") or 0)


def run_parity(
    family: Family,
    download_dir: Path,
    stage_dir: Path,
    onnx_path: Path,
    settings: ParitySettings,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every comparison's metrics and the gate verdict, as the report records them.

    JAX, ONNX Runtime and the reference run one after the other, each freed before the next
    loads: peak memory is one copy of the weights (plus the runtimes), not three.
    """
    inputs, jax_side = jax_outputs(family, stage_dir, settings)
    window = sliding_window(stage_dir) if settings.decoder == "kv" else 0
    onnx_side = onnx_outputs(onnx_path, inputs, settings, threads, window)
    release_memory()  # the session, ended
    reference_logits = dict(
        zip(
            inputs,
            family.reference_logits(download_dir, stage_dir, list(inputs.values())),
            strict=True,
        )
    )
    jax_logits, onnx_logits = jax_side.logits, onnx_side.logits
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

    decode = {
        "prompt": decode_prompt(inputs)[0].tolist(),
        "onnx": onnx_side.decode,
        "jax": jax_side.decode,
    }
    decode["agree"] = decode["onnx"] == decode["jax"]
    if not decode["agree"]:
        failures.append(f"greedy decode: ONNX {decode['onnx']} != JAX {decode['jax']}")

    generation_record = None
    if onnx_side.generation is not None:
        from onnxforge import generation

        reference = family.reference_generate(
            download_dir, stage_dir, onnx_side.generation.prompt, onnx_side.generation.steps
        )
        generation_record, generation_failures = generation.gates(
            onnx_logits, reference_logits, onnx_side.generation, reference, settings.gates
        )
        failures += generation_failures

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
        **({"generation": generation_record} if generation_record else {}),
    }
