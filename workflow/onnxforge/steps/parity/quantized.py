"""Parity of a quantized variant (int4-kv, int8-kv, ...): two gates, both failing the target.

1. **Exactness** (is the graph right?): ONNX Runtime against the family's JAX model run with the
   dequantized weights the graph holds (``graph.dequantized``: the same values, in float32,
   put back into the JAX parameters they came from through the float export it quantized).
   ONNX Runtime runs a copy of the graph at accuracy level 1 (float32 activations: MatMulNBits'
   attribute, a plain graph's session option, QMoE's fp32 kernel), where the two must agree to
   float rounding: the dtype's gates on the prefill logits, identical greedy tokens, and the
   KV generation gates with JAX on the dequantized weights as their reference. A wrong block
   scale, a transposed block or two experts swapped fail it, whatever the quality gate says.
2. **Quality** (is the quantization acceptable?): the graph as deployed (its accuracy level: 4
   quantizes activations to int8) against transformers at full precision, on the seeded ids
   and the real text (``quality``): KL per token (mean, 99th percentile), top-1 and top-5
   agreement, the perplexity ratio on the text, and the greedy prefix over the generation
   gates' decode, against ``gates.int4`` / ``int8``. A checkpoint with random weights has no
   quality to judge: its figures are reported, not gated (``quality_gated``).

The report also holds what level 4 costs (deployed against exact) and the quantization's
own figures (the export manifest's: what was quantized, per-expert requantization errors).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import paths, progress, texts
from onnxforge.families.base import Family
from onnxforge.steps.parity import generation, metrics, quality
from onnxforge.steps.parity.parity import (
    Outputs,
    ParitySettings,
    decode_prompt,
    genai_note,
    greedy_decode,
    long_input,
    onnx_outputs,
    parity_inputs,
    release_memory,
    report_head,
    saved_logits,
    sliding_window,
)

EXACT_LEVEL = 1  # MatMulNBits' float32 compute type
# ONNX Runtime's CPU QMoE quantizes activations to int8 for blocked int8 experts unless this is
# set when the session is made (onnxruntime/contrib_ops/cpu/moe).
QMOE_FLOAT_KERNEL = ("ORT_QMOE_CPU_QNBIT_GEMM", "fp32")


def run_quantized_parity(
    family: Family,
    download_dir: Path,
    stage_dir: Path,
    export_dir: Path,
    base_dir: Path,
    settings: ParitySettings,
    scratch: Path,
    threads: int | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report of both gates, and the logits a crosscheck reads (JAX's are the dequantized
    model's). ``scratch``: a folder on the export's file system, for the graph's level-1 copy
    (``exact_copy``)."""
    from onnxforge.graph import dequantized

    export_dir, base_dir = Path(export_dir), Path(base_dir)
    tokenizer = texts.load_tokenizer(download_dir)
    window = sliding_window(stage_dir)
    with progress.phase("JAX on the graph's dequantized weights"):
        weights = dequantized.graph_weights(export_dir, base_dir)
        weight_check = check_weights(
            weights, dequantized.gathered_tables(export_dir), settings.quantize
        )
        inputs, jax_side, jax_generation = _jax_dequantized(
            family, stage_dir, settings, tokenizer, weights, window
        )
        del weights
        release_memory()
    with progress.phase(f"ONNX Runtime at accuracy level {EXACT_LEVEL} (exactness)"):
        with exact_copy(export_dir, scratch) as (exact_path, config):
            exact = onnx_outputs(exact_path, inputs, settings, threads, window, config)
        release_memory()
    level = settings.quantize["accuracy_level"]
    with progress.phase(f"ONNX Runtime as deployed (accuracy level {level})"):
        deployed = onnx_outputs(export_dir / paths.ONNX_FILE, inputs, settings, threads, window)
        release_memory()
    with progress.phase("reference (transformers) forward and generate"):
        outputs = family.reference_logits(download_dir, stage_dir, list(inputs.values()))
        reference_logits = dict(zip(inputs, outputs, strict=True))
        reference_tokens, _ = family.reference_generate(
            download_dir, stage_dir, deployed.generation.prompt, deployed.generation.steps
        )

    exactness, failures = exactness_gates(jax_side, exact, jax_generation, settings.gates)
    exactness["weights"] = weight_check
    failures = [f"exactness weights: {f}" for f in weight_check["failures"]] + failures
    figures = quality_figures(inputs, deployed, reference_logits, reference_tokens)
    # What the weights alone cost (level 1: float32 activations), reported beside the gated
    # figures of the graph as deployed.
    weights_only = quality_figures(inputs, exact, reference_logits, reference_tokens)["overall"]
    quality_failures = quality.quality_gate(figures["overall"], settings.quality_gates or {})
    if settings.quality_gated:
        failures += [f"quality: {f}" for f in quality_failures]
    manifest = json.loads((export_dir / "manifest.json").read_text())["export"]
    diagnosed = long_input(inputs)
    report = {
        **report_head(failures, settings, inputs),
        "summary": {
            "onnx_vs_jax": exactness["summary"],
            "onnx_vs_reference": metrics.summarize(figures.pop("comparisons")),
        },
        "comparisons": {"onnx_vs_jax": exactness.pop("comparisons")},
        "kl_per_token": {
            "input": diagnosed,
            "onnx_vs_jax": metrics.kl_per_token(
                jax_side.logits[diagnosed], exact.logits[diagnosed]
            ).tolist(),
            "onnx_vs_reference": metrics.kl_per_token(
                reference_logits[diagnosed], deployed.logits[diagnosed]
            ).tolist(),
        },
        "decode": exactness.pop("decode"),
        "quantization": {
            "settings": settings.quantize,
            "exact_accuracy_level": EXACT_LEVEL,
            "quantized": manifest["quantized"],
        },
        "exactness": exactness,
        "quality": {
            "gates": settings.quality_gates,
            "gated": settings.quality_gated,
            "failures": quality_failures,
            "weights_only": weights_only,
            "deployed_vs_exact": metrics.summarize(
                {n: metrics.compare_logits(exact.logits[n], deployed.logits[n]) for n in inputs}
            ),
            **figures,
        },
        "genai": genai_note(export_dir, download_dir),
    }
    return report, saved_logits(inputs, jax_side.logits, reference_logits)


def _jax_dequantized(family, stage_dir, settings, tokenizer, weights, window):
    """The parity inputs, and the JAX model on the dequantized weights: its logits and greedy
    decode (``Outputs``), and its side of the generation gates (the greedy tokens of their
    decode and each step's logits)."""
    import jax
    import jax.numpy as jnp

    from onnxforge.graph import signature

    model = family.load(stage_dir, jnp.dtype(settings.dtype))
    forward, vocab_size = model.apply, model.vocab_size
    params = with_dequantized(model.params, weights)
    del model  # its float parameters: one copy of the weights in memory, the dequantized one
    apply = jax.jit(lambda p, ids: forward(p, ids).astype(jnp.float32))

    def logits_fn(ids):
        return np.asarray(apply(params, ids))

    inputs = parity_inputs(vocab_size, settings)
    if tokenizer is not None:
        inputs |= texts.text_inputs(
            tokenizer, vocab_size, settings.text_tokens, signature.INPUT_DTYPE
        )
    logits = {name: np.array(logits_fn(ids), np.float32) for name, ids in inputs.items()}
    prompt = decode_prompt(inputs)
    outputs = Outputs(logits, greedy_decode(logits_fn, prompt, settings.decode_tokens))
    steps = generation.decode_steps(settings.generate_tokens, prompt.shape[1], window)
    tokens = greedy_decode(logits_fn, prompt, steps)
    sequence = np.concatenate([prompt, np.asarray([tokens[:-1]], prompt.dtype)], axis=1)
    step_logits = logits_fn(sequence)[0, prompt.shape[1] - 1 :]
    jax.clear_caches()  # the model and its weights go with this frame
    return inputs, outputs, (tokens, np.asarray(step_logits, np.float32))


def with_dequantized(params: Any, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    """``params`` (a JAX pytree) with each leaf a quantized weight was made of holding the
    dequantized values (``graph.dequantized.params_with_dequantized``, matched through the
    float export's values)."""
    import jax

    from onnxforge.graph import dequantized

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}
    floats = {name: pair[0] for name, pair in weights.items()}
    values = {name: pair[1] for name, pair in weights.items() if pair[1] is not None}
    replaced = dequantized.params_with_dequantized(leaves, floats, values)
    rebuilt = [  # no copy where the dtype is the leaf's already (the dequantized arrays)
        np.asarray(replaced[jax.tree_util.keystr(path)]).astype(np.asarray(leaf).dtype, copy=False)
        for path, leaf in flat
    ]
    return jax.tree_util.tree_unflatten(treedef, rebuilt)


@contextlib.contextmanager
def exact_copy(export_dir: Path, scratch: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The export's graph at accuracy level 1 (its weights the same file): a copy of
    ``model.onnx`` with every MatMulNBits' and QMoE's level set to float32 activations, in a
    folder under ``scratch`` beside a hard link to the data (ONNX Runtime refuses external
    data outside the model's folder, symbolic links included; a copy where ``scratch`` is on
    another file system); and the session config a plain graph needs for the same (ONNX
    Runtime fuses its DequantizeLinear + MatMul at a session-wide level). QMoE's float kernel
    is chosen by the environment while the session is made (``QMOE_FLOAT_KERNEL``)."""
    import onnx

    from onnxforge.graph.quantize import session_config

    model = onnx.load(str(export_dir / paths.ONNX_FILE), load_external_data=False)
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in ("MatMulNBits", "QMoE"):
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            if node.op_type == "MatMulNBits":
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", EXACT_LEVEL))
    key, value = QMOE_FLOAT_KERNEL
    before = os.environ.get(key)
    with tempfile.TemporaryDirectory(prefix="exact-", dir=scratch) as tmp:
        path = Path(tmp) / paths.ONNX_FILE
        onnx.save(model, str(path))
        data = export_dir / paths.DATA_FILE
        try:
            os.link(data, Path(tmp) / paths.DATA_FILE)
        except OSError:
            shutil.copyfile(data, Path(tmp) / paths.DATA_FILE)
        os.environ[key] = value
        try:
            yield path, session_config(EXACT_LEVEL)
        finally:
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before


def check_weights(
    weights: dict[str, tuple[np.ndarray, np.ndarray | None]],
    gathered: set[str],
    quantize: dict[str, Any],
) -> dict[str, Any]:
    """Each dequantized weight against the float weight it replaced, block by block: the
    other half of exactness. ONNX Runtime against JAX on the graph's own weights proves the
    graph computes what its weights say; this proves they say what was quantized: every value
    within one quantization step of its float value, ``1 / 2**(bits - 1)`` of its block's
    largest (round to nearest is within half a step, but symmetric codes reach -2**(bits-1)
    and only 2**(bits-1) - 1 above: the positive end clips by up to one step), as a wrong
    block scale, a transposed block or two swapped experts are not."""
    from onnxforge.graph import dequantized

    head = quantize["lm_head"]  # the LM head's own bits, where it has them
    bits = min(quantize["bits"], int(head[3:]) if head.startswith("int") else quantize["bits"])
    bound = 1.0 / 2 ** (bits - 1) * (1 + 1e-3)
    worst, failures, checked = {}, [], 0
    for name, (floats, values) in weights.items():
        if values is None:
            continue
        axis = 1 if name in gathered else 0
        error = float(dequantized.block_errors(floats, values, quantize["block_size"], axis).max())
        worst[name] = error
        checked += 1
        if not error <= bound:
            failures.append(
                f"{name}: a dequantized value is {error:.3g} of its block's largest away from "
                f"the float weight it replaced (at most one quantization step: {bound:.3g})"
            )
    name = max(worst, key=worst.get) if worst else None
    return {
        "checked": checked,
        "bound": bound,
        "worst": {"weight": name, "error": worst.get(name)},
        "failures": failures,
    }


def exactness_gates(
    jax_side: Outputs,
    exact: Outputs,
    jax_generation: tuple[list[int], np.ndarray],
    bounds: dict[str, float],
) -> tuple[dict[str, Any], list[str]]:
    """ONNX Runtime (level 1) against JAX on the dequantized weights: prefill logits, greedy
    decode, and the generation gates with JAX's decode as their reference."""
    comparisons = {
        n: metrics.compare_logits(jax_side.logits[n], exact.logits[n]) for n in jax_side.logits
    }
    summary = metrics.summarize(comparisons)
    failures = [f"exactness onnx_vs_jax: {f}" for f in metrics.check_gates(summary, bounds)]
    decode = {
        "prompt": exact.generation.prompt[0].tolist(),
        "onnx": exact.decode,
        "jax": jax_side.decode,
        "agree": exact.decode == jax_side.decode,
    }
    if not decode["agree"]:
        failures.append(
            f"exactness greedy decode: ONNX {exact.decode} != JAX (dequantized) {jax_side.decode}"
        )
    record, generation_failures = generation.gates(
        exact.logits, jax_side.logits, exact.generation, jax_generation, bounds
    )
    failures += [f"exactness {f.replace('transformers', 'JAX')}" for f in generation_failures]
    return {
        "summary": summary,
        "comparisons": comparisons,
        "decode": decode,
        "generation": record,
    }, failures


def quality_figures(
    inputs: dict[str, np.ndarray],
    deployed: Outputs,
    reference_logits: dict[str, np.ndarray],
    reference_tokens: list[int],
) -> dict[str, Any]:
    """The deployed graph against transformers at full precision: ``quality``'s figures per
    input (the perplexity ratio on real text only) and over all of them, the greedy prefix
    of the generation gates' decode; and the usual comparison per input."""
    per_input = {}
    for name, ids in inputs.items():
        text = ids if name.startswith("text_") else None
        per_input[name] = quality.quality_figures(
            deployed.logits[name], reference_logits[name], text
        )
    overall = metrics.summarize(per_input)  # the worst over inputs
    overall["greedy_prefix"] = quality.greedy_prefix(
        deployed.generation.tokens, list(reference_tokens)
    )
    overall["greedy_tokens"] = len(deployed.generation.tokens)
    return {
        "overall": overall,
        "per_input": per_input,
        "decode": {"onnx": deployed.generation.tokens, "reference": list(reference_tokens)},
        "comparisons": {
            n: metrics.compare_logits(reference_logits[n], deployed.logits[n]) for n in inputs
        },
    }
