"""Comparison metrics between two sets of logits, and the gates over them.

A NaN or an infinity never passes: every compared pair records its non-finite values (how
many, on which side, the first position), the summary over inputs keeps NaN rather than
skipping it, and ``check_gates`` fails on any non-finite value whatever the gates are.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from onnxforge.core.finite import describe_nonfinite, nonfinite


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, shifted by the row's max (no overflow)."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_k_agreement(ref: np.ndarray, cand: np.ndarray, k: int) -> dict[str, float]:
    """MaxText's logit checker's top-k figures over rows of ``[tokens, vocab]``: overlap
    (shared tokens / k), Jaccard (shared / union) and rank agreement (share of the k ranks
    holding the same token on both sides), each the mean over tokens."""
    k = min(k, ref.shape[-1])
    top_ref = np.argsort(-ref, axis=-1, kind="stable")[:, :k]
    top_cand = np.argsort(-cand, axis=-1, kind="stable")[:, :k]
    shared = np.array([len(set(a) & set(b)) for a, b in zip(top_ref, top_cand, strict=True)])
    return {
        f"top{k}_overlap": float(np.mean(shared / k)),
        f"top{k}_jaccard": float(np.mean(shared / (2 * k - shared))),
        f"top{k}_rank_agreement": float(np.mean(top_ref == top_cand)),
    }


def kl_per_token(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(reference || candidate) per token of ``[..., vocab]`` logits, flattened."""
    ref = reference.astype(np.float64).reshape(-1, reference.shape[-1])
    cand = candidate.astype(np.float64).reshape(-1, candidate.shape[-1])
    with np.errstate(all="ignore"):
        log_p, log_q = log_softmax(ref), log_softmax(cand)
        return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


WIDE_TOP_K = 10  # MaxText's checker's k


def compare_logits(reference: np.ndarray, candidate: np.ndarray, top_k: int = 5) -> dict[str, Any]:
    """How far ``candidate`` is from ``reference`` (both ``[..., vocab]``)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    found = nonfinite(reference, candidate)
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    # With non-finite values the metrics below come out NaN; the record above fails the gate.
    with np.errstate(all="ignore") if found["count"] else contextlib.nullcontext():
        diff = np.abs(ref - cand)
        flat_ref, flat_cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        cosine = np.sum(flat_ref * flat_cand, -1) / (
            np.linalg.norm(flat_ref, axis=-1) * np.linalg.norm(flat_cand, axis=-1) + 1e-30
        )
        kl = kl_per_token(flat_ref, flat_cand)
        k = min(top_k, ref.shape[-1])
        top_ref = np.argsort(-flat_ref, axis=-1)[:, :k]
        top_cand = np.argsort(-flat_cand, axis=-1)[:, :k]
        overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand, strict=True)]
        return {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "max_rel": float((diff / (np.abs(ref) + 1e-6)).max()),
            "min_cosine": float(cosine.min()),
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "top1_agreement": float(np.mean(flat_ref.argmax(-1) == flat_cand.argmax(-1))),
            f"top{k}_overlap": float(np.mean(overlap)),
            **top_k_agreement(flat_ref, flat_cand, WIDE_TOP_K),
            "tokens": int(flat_ref.shape[0]),
            "nonfinite": found,
        }


# gate key -> (metric, direction): "max" means the metric must not exceed the bound.
GATE_METRICS = {
    "max_abs": ("max_abs", "max"),
    "kl_max": ("kl_max", "max"),
    "top1_min": ("top1_agreement", "min"),
}


def check_gates(
    metrics: dict[str, Any],
    gates: dict[str, float],
    known: dict[str, tuple[str, str]] = GATE_METRICS,
) -> list[str]:
    """The failed gates, each as a sentence; empty when all hold.

    ``metrics`` is one comparison's (``compare_logits``) or a summary (``summarize``). Any
    non-finite value fails, whatever the gates; so does a gated metric that is missing.
    ``known``: the gate keys and what each bounds (``quality.QUALITY_GATES`` for the
    quantization quality gate)."""
    failures = []
    record = metrics.get("nonfinite")
    if record and record.get("count"):
        if "inputs" in record:  # a summary: the first input that has any
            first, per_input = next(iter(record["inputs"].items()))
            sentence = describe_nonfinite(per_input, first)
            others = len(record["inputs"]) - 1
            sentence = f"{record['count']} non-finite value(s) in all; " + sentence
            sentence += f" (and {others} more input(s))" if others else ""
        else:
            sentence = describe_nonfinite(record)
        failures.append(sentence + "; NaN or infinity never passes a gate")
    for gate, bound in gates.items():
        metric, direction = known[gate]
        relation = "<=" if direction == "max" else ">="
        value = metrics.get(metric)
        if not isinstance(value, int | float):
            failures.append(f"{metric} was not computed, gate requires {relation} {bound:g}")
            continue
        ok = value <= bound if direction == "max" else value >= bound
        if not ok or not np.isfinite(value):
            failures.append(f"{metric} = {value:.3g}, gate requires {relation} {bound:g}")
    return failures


def summarize(per_input: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worst case over inputs, per metric; NaN anywhere makes that metric NaN. ``nonfinite``
    adds up the inputs' counts and keeps each input that has any, by name."""
    worst: dict[str, Any] = {}
    for input_name, metrics in per_input.items():
        for name, value in metrics.items():
            if name == "nonfinite":
                total = worst.setdefault("nonfinite", {"count": 0, "inputs": {}})
                if value and value.get("count"):
                    total["count"] += value["count"]
                    total["inputs"][input_name] = value
            elif name == "tokens":
                worst[name] = worst.get(name, 0) + value
            elif not isinstance(value, int | float):
                continue
            elif name in ("min_cosine", "top1_agreement") or name.endswith(
                ("_overlap", "_jaccard", "_rank_agreement")
            ):
                worst[name] = float(np.minimum(worst.get(name, np.inf), value))  # NaN stays
            else:
                worst[name] = float(np.maximum(worst.get(name, -np.inf), value))
    return worst
