"""Comparison metrics between two sets of logits, and the gates over them."""

from __future__ import annotations

from typing import Any

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, top_k: int = 5
) -> dict[str, float]:
    """How far ``candidate`` is from ``reference`` (both ``[..., vocab]``)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    flat_ref, flat_cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
    cosine = np.sum(flat_ref * flat_cand, -1) / (
        np.linalg.norm(flat_ref, axis=-1) * np.linalg.norm(flat_cand, axis=-1) + 1e-30
    )
    log_p, log_q = _log_softmax(flat_ref), _log_softmax(flat_cand)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)  # KL(reference || candidate) per token
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
        "tokens": int(flat_ref.shape[0]),
    }


# gate key -> (metric, direction): "max" means the metric must not exceed the bound.
GATE_METRICS = {
    "max_abs": ("max_abs", "max"),
    "kl_max": ("kl_max", "max"),
    "top1_min": ("top1_agreement", "min"),
}


def check_gates(metrics: dict[str, float], gates: dict[str, float]) -> list[str]:
    """The failed gates, each as a sentence; empty when all hold."""
    failures = []
    for gate, bound in gates.items():
        metric, direction = GATE_METRICS[gate]
        value = metrics[metric]
        ok = value <= bound if direction == "max" else value >= bound
        if not ok or not np.isfinite(value):
            relation = "<=" if direction == "max" else ">="
            failures.append(f"{metric} = {value:.3g}, gate requires {relation} {bound:g}")
    return failures


def summarize(per_input: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Worst case over inputs, per metric."""
    worst: dict[str, float] = {}
    for metrics in per_input.values():
        for name, value in metrics.items():
            if name == "tokens":
                worst[name] = worst.get(name, 0) + value
            elif name in ("min_cosine", "top1_agreement") or name.endswith("_overlap"):
                worst[name] = min(worst.get(name, np.inf), value)
            else:
                worst[name] = max(worst.get(name, -np.inf), value)
    return worst
