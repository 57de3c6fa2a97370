"""Comparison metrics between two sets of logits, and the gates over them.

A NaN or an infinity never passes: every compared pair records its non-finite values (how
many, on which side, the first position), the summary over inputs keeps NaN rather than
skipping it, and ``check_gates`` fails on any non-finite value whatever the gates are.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from onnxforge.errors import InputError

_CHUNK = 1 << 20  # elements checked at a time: the mask never costs a tensor's worth of memory


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def find_nonfinite(array: Any, chunk: int = _CHUNK) -> dict[str, Any] | None:
    """None when every value is finite; else their count, the first one's index and value.

    Integer and boolean arrays are finite by construction; floating ones (bfloat16 and the
    other ``ml_dtypes`` too) are scanned in slabs of rows of about ``chunk`` elements, so
    that neither the mask nor a strided array (a transpose) costs a tensor's worth of memory."""
    array = np.asarray(array)
    if array.dtype.kind in "biu" or array.size == 0:
        return None
    scalar = array.ndim == 0
    if scalar:
        array = array.reshape(1)
    rows = max(1, chunk // max(1, array[0].size))
    count, first = 0, None
    for start in range(0, array.shape[0], rows):
        bad = ~np.isfinite(array[start : start + rows])
        found = int(np.count_nonzero(bad))
        if found:
            count += found
            if first is None:
                local = np.unravel_index(int(bad.argmax()), bad.shape)
                first = (start + int(local[0]), *(int(i) for i in local[1:]))
    if first is None:
        return None
    index = [] if scalar else list(first)
    return {"count": count, "index": index, "value": str(float(array[first]))}


def nonfinite(reference: Any, candidate: Any) -> dict[str, Any]:
    """The non-finite values of one compared pair: ``count`` over both, and for each side
    None or its count, first index and value. Any count above 0 fails the gates."""
    sides = {"reference": find_nonfinite(reference), "candidate": find_nonfinite(candidate)}
    return {"count": sum(s["count"] for s in sides.values() if s), **sides}


def describe_nonfinite(record: dict[str, Any], input_name: str | None = None) -> str:
    """One sentence: where the first non-finite values are."""
    where = f" of input {input_name!r}" if input_name else ""
    parts = [
        f"{side}{where} has {found['count']} (first: {found['value']} at {found['index']})"
        for side in ("reference", "candidate")
        if (found := record.get(side))
    ]
    return f"{record['count']} non-finite value(s): " + "; ".join(parts)


def nonfinite_error(name: str, found: dict[str, Any], size: int) -> InputError:
    """The error for ``found`` (``find_nonfinite``'s) in ``size`` values of weights ``name``."""
    return InputError(
        f"{name}: {found['count']} of {size} values are not finite (first: {found['value']} "
        f"at {found['index']}); expected finite weights: the checkpoint is damaged or was "
        "saved from a diverged run. Download it again, or fix the weights where they are made"
    )


def check_finite(name: str, array: Any) -> None:
    """Refuse an array holding NaN or infinity, naming it (``name``: the file and tensor)."""
    if found := find_nonfinite(array):
        raise nonfinite_error(name, found, int(np.asarray(array).size))


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
        log_p, log_q = _log_softmax(ref), _log_softmax(cand)
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


def check_gates(metrics: dict[str, Any], gates: dict[str, float]) -> list[str]:
    """The failed gates, each as a sentence; empty when all hold.

    ``metrics`` is one comparison's (``compare_logits``) or a summary (``summarize``). Any
    non-finite value fails, whatever the gates; so does a gated metric that is missing."""
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
        metric, direction = GATE_METRICS[gate]
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
