"""Parity: ONNX Runtime against JAX, and JAX against the family's independent reference.

The same token ids go through all three: seeded ids, and where the checkpoint ships a
tokenizer a long real text and a short prompt (``texts``). A gate that does not hold fails
the target; the report is written first, so it can be read either way. When a gate fails (or
``diagnosis.run`` is ``always``) the per-layer diagnosis runs too (``run_diagnosis``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import paths, progress, providers, texts
from onnxforge.families.base import Family
from onnxforge.graph import signature
from onnxforge.steps.parity import diagnosis, metrics


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
    text_tokens: int
    opset: int  # the variant's, for the diagnosis's debug export
    diagnosis: dict[str, Any]  # {"run": "on_failure" | "always", "tolerance": float}
    # A quantized variant's (parity/quantized.py): how it was quantized, and its quality gates
    # against the full-precision reference (gated unless the checkpoint has random weights).
    quantize: dict[str, Any] | None = None
    quality_gates: dict[str, float] | None = None
    quality_gated: bool = True


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
    """The greedy decode's prompt: the short real prompt where there is one, else the first
    8 tokens of the first input's first row."""
    short = [name for name in inputs if name.startswith("text_short")]
    return inputs[short[0]] if short else inputs[next(iter(inputs))][:1, :8]


def long_input(inputs: dict[str, np.ndarray]) -> str:
    """The input the diagnosis runs on: the long real text where there is one."""
    for prefix in ("text_long", "long"):
        found = [name for name in inputs if name.startswith(prefix)]
        if found:
            return found[0]
    return next(iter(inputs))


def reference_decode(reference_logits: np.ndarray, prompt_length: int, tokens: list[int]):
    """The reference's greedy tokens, from one forward pass over the prompt and ``tokens``
    (JAX's greedy tokens): while the reference picks the same token at each step, its own
    greedy decode would have seen exactly this sequence; it ends at its first other pick."""
    picks = reference_logits[0, prompt_length - 1 : prompt_length - 1 + len(tokens)].argmax(-1)
    decoded = []
    for pick, token in zip(picks.tolist(), tokens, strict=True):
        decoded.append(int(pick))
        if pick != token:
            break
    return decoded


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
    family: Family, stage_dir: Path, settings: ParitySettings, tokenizer: Any = None
) -> tuple[dict[str, np.ndarray], Outputs]:
    """The parity inputs (seeded ids within the model's vocabulary) and JAX's outputs on them.

    The model, its weights and its compiled programs are let go before returning: ONNX
    Runtime and the reference each load their own copy of the weights next, one at a time.
    """
    import jax

    inputs, outputs = _run_jax(family, stage_dir, settings, tokenizer)
    jax.clear_caches()  # its compiled programs
    release_memory()
    return inputs, outputs


def _run_jax(
    family: Family, stage_dir: Path, settings: ParitySettings, tokenizer: Any
) -> tuple[dict[str, np.ndarray], Outputs]:
    import jax
    import jax.numpy as jnp

    model = family.load(stage_dir, jnp.dtype(settings.dtype))
    apply = jax.jit(lambda params, ids: model.apply(params, ids).astype(jnp.float32))
    inputs = parity_inputs(model.vocab_size, settings)
    if tokenizer is not None:
        inputs |= texts.text_inputs(
            tokenizer, model.vocab_size, settings.text_tokens, signature.INPUT_DTYPE
        )
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
    session_config: dict[str, str] | None = None,
) -> Outputs:
    """ONNX Runtime's outputs; its session (and its copy of the weights) ends on return. A KV
    export's logits are its prefill's; it also runs the generation gates' side (``window``:
    the model's sliding window, which their decode runs past)."""
    session = providers.onnx_session(onnx_path, settings.provider, threads, session_config)
    if settings.decoder != "kv":

        def logits_fn(token_ids: np.ndarray) -> np.ndarray:
            return session.run([signature.LOGITS], signature.feeds(token_ids))[0]

        return run_model(logits_fn, inputs, settings.decode_tokens)

    from onnxforge.steps.parity import generation

    runner = generation.KVRunner(session)
    outputs = run_model(runner.prefill, inputs, settings.decode_tokens)
    vocab = next(iter(outputs.logits.values())).shape[-1]
    prompt = decode_prompt(inputs).astype(np.int64)
    outputs.generation = generation.run_onnx(runner, prompt, settings, window, vocab)
    return outputs


def sliding_window(stage_dir: Path) -> int:
    """The stage config's sliding window (0: none), for the generation gates' decode."""
    from onnxforge.core.hf_config import read_config_json

    config = read_config_json(stage_dir)
    layer_types = config.get("layer_types") or []
    if layer_types and "sliding_attention" not in layer_types:
        return 0
    return int(config.get("sliding_window") or 0)


# A crosscheck compares these logits across implementations; at real vocabularies (GPT-OSS:
# 201088) the long inputs would add hundreds of MB per target, so they are kept while the file
# stays under this size. The seeded short batch always is.
SAVED_LOGITS_BYTES = 256 << 20


def saved_logits(
    inputs: dict[str, np.ndarray],
    jax_logits: dict[str, np.ndarray],
    reference_logits: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """What the parity folder keeps for a crosscheck: per input its ids (``ids.NAME``), JAX's
    and the reference's logits (``jax.NAME``, ``reference.NAME``), first inputs first."""
    saved: dict[str, np.ndarray] = {}
    size = 0
    for name, ids in inputs.items():
        size += jax_logits[name].nbytes + reference_logits[name].nbytes
        if saved and size > SAVED_LOGITS_BYTES:
            break
        saved |= {
            f"ids.{name}": np.ascontiguousarray(ids),
            f"jax.{name}": np.ascontiguousarray(jax_logits[name], np.float32),
            f"reference.{name}": np.ascontiguousarray(reference_logits[name], np.float32),
        }
    return saved


def write_logits(path: Path, saved: dict[str, np.ndarray]) -> None:
    """``saved_logits`` as safetensors (the same bytes for the same values), with the inputs'
    order in its metadata (safetensors sorts its keys)."""
    import json

    from safetensors.numpy import save_file

    order = [key.split(".", 1)[1] for key in saved if key.startswith("ids.")]
    save_file(saved, str(path), metadata={"inputs": json.dumps(order)})


def run_parity(
    family: Family,
    download_dir: Path,
    stage_dir: Path,
    onnx_path: Path,
    settings: ParitySettings,
    threads: int | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every comparison's metrics and the gate verdict, as the report records them; and the
    logits a crosscheck reads (``saved_logits``).

    JAX, ONNX Runtime and the reference run one after the other, each freed before the next
    loads: peak memory is one copy of the weights (plus the runtimes), not three.
    """
    tokenizer = texts.load_tokenizer(download_dir)
    with progress.phase("JAX forward and greedy decode"):
        inputs, jax_side = jax_outputs(family, stage_dir, settings, tokenizer)
    window = sliding_window(stage_dir) if settings.decoder == "kv" else 0
    with progress.phase("ONNX Runtime forward and greedy decode"):
        onnx_side = onnx_outputs(onnx_path, inputs, settings, threads, window)
        release_memory()  # the session, ended
    prompt = decode_prompt(inputs)
    # One more reference input: the prompt and JAX's greedy tokens, for the reference's decode.
    decode_ids = np.concatenate([prompt, np.asarray([jax_side.decode], prompt.dtype)], axis=1)
    with progress.phase("reference (transformers) forward"):
        *reference_outputs, reference_decode_logits = family.reference_logits(
            download_dir, stage_dir, [*inputs.values(), decode_ids]
        )
    reference_logits = dict(zip(inputs, reference_outputs, strict=True))
    jax_logits, onnx_logits = jax_side.logits, onnx_side.logits
    sides = {
        "onnx_vs_jax": (jax_logits, onnx_logits),
        "jax_vs_reference": (reference_logits, jax_logits),
    }
    comparisons = {
        name: {n: metrics.compare_logits(ref[n], cand[n]) for n in inputs}
        for name, (ref, cand) in sides.items()
    }
    failures = []
    summary = {}
    for name, per_input in comparisons.items():
        summary[name] = metrics.summarize(per_input)
        failures += [f"{name}: {f}" for f in metrics.check_gates(summary[name], settings.gates)]
    diagnosed_input = long_input(inputs)
    kl_per_token = {
        name: metrics.kl_per_token(ref[diagnosed_input], cand[diagnosed_input]).tolist()
        for name, (ref, cand) in sides.items()
    }

    decode = {
        "prompt": prompt[0].tolist(),
        "onnx": onnx_side.decode,
        "jax": jax_side.decode,
        "reference": reference_decode(reference_decode_logits, prompt.shape[1], jax_side.decode),
    }
    decode["agree"] = decode["onnx"] == decode["jax"]
    decode["reference_agrees"] = decode["reference"] == decode["jax"]
    if tokenizer is not None:
        decode["text"] = {
            side: texts.decode(tokenizer, decode[side])
            for side in ("prompt", "onnx", "jax", "reference")
        }
    if not decode["agree"]:
        failures.append(f"greedy decode: ONNX {decode['onnx']} != JAX {decode['jax']}")
    if not decode["reference_agrees"]:
        failures.append(
            f"greedy decode: JAX {decode['jax']} != reference {decode['reference']} "
            "(the reference's tokens up to its first other pick)"
        )

    generation_record = None
    if onnx_side.generation is not None:
        from onnxforge.steps.parity import generation

        with progress.phase("generation gates (transformers' generate)"):
            reference = family.reference_generate(
                download_dir, stage_dir, onnx_side.generation.prompt, onnx_side.generation.steps
            )
        generation_record, generation_failures = generation.gates(
            onnx_logits, reference_logits, onnx_side.generation, reference, settings.gates
        )
        failures += generation_failures

    report = {
        **report_head(failures, settings, inputs),
        "summary": summary,
        "comparisons": comparisons,
        "kl_per_token": {"input": diagnosed_input, **kl_per_token},
        "decode": decode,
        **({"generation": generation_record} if generation_record else {}),
    }
    if settings.decoder == "kv":
        report["genai"] = genai_note(Path(onnx_path).parent, download_dir)
    if failures or settings.diagnosis["run"] == "always":
        with progress.phase("diagnosis (per-layer taps)"):
            report["diagnosis"] = run_diagnosis(
                family, download_dir, stage_dir, inputs[diagnosed_input], settings, threads
            )
        report["diagnosis"]["input"] = diagnosed_input
        for name, found in report["diagnosis"]["comparisons"].items():
            if name in failures_by_comparison(failures):
                report["failures"].append(f"diagnosis ({name}): {found['sentence']}")
    return report, saved_logits(inputs, jax_logits, reference_logits)


def report_head(
    failures: list[str], settings: ParitySettings, inputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """What every report begins with: the verdict, its failures, the gates and the inputs."""
    return {
        "status": "FAIL" if failures else "PASS",
        "failures": failures,
        "dtype": settings.dtype,
        "provider": settings.provider,
        "gates": settings.gates,
        "inputs": {name: list(ids.shape) for name, ids in inputs.items()},
    }


def genai_note(export_dir: Path, checkpoint_dir: Path) -> str:
    """One line of the report: whether ONNX Runtime GenAI runs the KV export's folder."""
    if (Path(export_dir) / paths.GENAI_CONFIG).is_file():
        return f"ONNX Runtime GenAI runs this folder as it is ({paths.GENAI_CONFIG}, tokenizer)"
    return (
        f"no ONNX Runtime GenAI folder: {Path(checkpoint_dir) / paths.TOKENIZER} is missing, "
        "and GenAI needs the tokenizer (include tokenizer*.json in the checkpoint); the model "
        "runs in ONNX Runtime and Optimum's ORT classes as it is"
    )


def failures_by_comparison(failures: list[str]) -> set[str]:
    """The comparisons (``onnx_vs_jax``, ...) some failure names."""
    return {f.split(":", 1)[0] for f in failures}


def run_diagnosis(
    family: Family,
    download_dir: Path,
    stage_dir: Path,
    token_ids: np.ndarray,
    settings: ParitySettings,
    threads: int | None,
) -> dict[str, Any]:
    """Per-layer taps of JAX, of a debug ONNX export with every tap as an extra output (made
    here, in a temporary folder, from the same staged model), and of the reference, on one
    input; each pair compared (``diagnosis.compare_taps``). One side at a time in memory."""
    with tempfile.TemporaryDirectory(prefix="onnxforge-debug-onnx-") as tmp:
        jax_taps, names, aliases = _jax_taps_and_debug_export(
            family, stage_dir, token_ids, settings, tmp
        )
        release_memory()
        session = providers.onnx_session(Path(tmp) / "debug.onnx", settings.provider, threads)
        values = session.run(None, signature.feeds(token_ids))
        del session
        release_memory()
    onnx_taps = dict(zip(names, values[1:], strict=True))
    onnx_taps |= dict.fromkeys(aliases, values[0])
    _, reference_taps = family.reference_taps(download_dir, stage_dir, token_ids)
    release_memory()
    tolerance = settings.diagnosis["tolerance"]
    return {
        "tolerance": tolerance,
        "comparisons": {
            "onnx_vs_jax": diagnosis.compare_taps(jax_taps, onnx_taps, tolerance),
            "jax_vs_reference": diagnosis.compare_taps(reference_taps, jax_taps, tolerance),
        },
    }


def logits_aliases(taps: dict[str, np.ndarray], logits: np.ndarray) -> list[str]:
    """The taps that are the logits themselves (an LM head with no soft cap after it): one
    value with two names, which the debug export cannot take, so they are read off the logits
    output. NaNs count as equal: weights that overflow make NaN logits, the tap's too."""
    return [
        name
        for name, value in taps.items()
        if value.shape == logits.shape and np.array_equal(value, logits, equal_nan=True)
    ]


def _jax_taps_and_debug_export(
    family: Family, stage_dir: Path, token_ids: np.ndarray, settings: ParitySettings, out: str
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """JAX's taps, and the debug export of them into ``out``: the names it outputs after the
    logits, and the taps read off the logits output (``aliases``)."""
    import jax
    import jax.numpy as jnp

    from onnxforge.graph import tracing

    model = family.load_taps(stage_dir, jnp.dtype(settings.dtype))
    logits, taps = jax.jit(model.apply)(model.params, token_ids)
    names = sorted(taps)
    taps = {name: np.array(taps[name]) for name in names}
    logits = np.asarray(logits)
    aliases = logits_aliases(taps, logits)
    del logits
    exported = [name for name in names if name not in aliases]

    def forward(ids):
        logits, found = model.apply(model.params, ids)
        return (logits, *(found[name] for name in exported))

    model_ir = tracing.trace(
        forward, f"{family.name}-debug", settings.opset, output_names=[signature.LOGITS, *exported]
    )
    tracing.save(model_ir, Path(out), onnx_file="debug.onnx", data_file="debug.onnx.data")
    del model_ir  # the model itself goes with this frame
    jax.clear_caches()
    return taps, exported, aliases
