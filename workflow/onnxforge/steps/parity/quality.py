"""The quality gate of a quantized target: is the quantization acceptable?

The exactness gate asks whether the graph computes what its dequantized weights say; this one
compares the quantized model with transformers at full precision, with llama.cpp's figures
(``perplexity --kl-divergence``): KL(reference || candidate) per token (mean, 99th
percentile), how often the top token is the same, how much of the top 5 is shared, the
perplexity of each on a real text and their ratio, and how many of the greedy tokens agree
before the first difference. KL and top-k come from ``metrics``; the gate is
``metrics.check_gates`` over ``QUALITY_GATES``, so NaN never passes here either.

Figures are named as ``metrics.compare_logits`` names its own, so ``metrics.summarize`` takes
the worst over inputs (the real text and the seeded ids): only the text has perplexities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxforge.core.finite import nonfinite
from onnxforge.steps.parity import metrics

# gate key (config.yaml gates.<dtype>.quality) -> (figure, direction), as metrics.GATE_METRICS
QUALITY_GATES = {
    "kl_mean_max": ("kl_mean", "max"),
    "kl_p99_max": ("kl_p99", "max"),
    "top1_min": ("top1_agreement", "min"),
    "top5_min": ("top5_overlap", "min"),
    "ppl_ratio_max": ("ppl_ratio", "max"),
    "greedy_prefix_min": ("greedy_prefix", "min"),
}
TOP_K = 5


def _rows(logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``[..., vocab]`` logits as ``[tokens, vocab]``, padding rows (mask 0) left out."""
    flat = np.asarray(logits).reshape(-1, logits.shape[-1])
    return flat if mask is None else flat[np.asarray(mask).reshape(-1).astype(bool)]


def _next_token_nll(logits: np.ndarray, token_ids: np.ndarray, valid: np.ndarray) -> float:
    """Mean negative log-likelihood of ids 1..n-1 given logits at 0..n-2 (per sequence), over
    the pairs whose two positions are both real tokens."""
    vocab = logits.shape[-1]
    log_p = metrics.log_softmax(logits[..., :-1, :].astype(np.float64).reshape(-1, vocab))
    targets = token_ids[..., 1:].reshape(-1)
    pairs = (valid[..., :-1] & valid[..., 1:]).reshape(-1)
    return float(-np.mean(log_p[pairs, targets[pairs]]))


def perplexities(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    token_ids: np.ndarray,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Each side's perplexity on the text ``token_ids`` (``[..., n]``, the logits
    ``[..., n, vocab]``), and candidate / reference."""
    token_ids = np.asarray(token_ids)
    if token_ids.shape != reference_logits.shape[:-1]:
        raise ValueError(
            f"token_ids {token_ids.shape} do not match the logits' positions "
            f"{reference_logits.shape[:-1]}"
        )
    valid = np.ones(token_ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if not (valid[..., :-1] & valid[..., 1:]).any():
        raise ValueError("token_ids need two consecutive real tokens for a perplexity")
    nll_candidate = _next_token_nll(candidate_logits, token_ids, valid)
    nll_reference = _next_token_nll(reference_logits, token_ids, valid)
    return {
        "ppl_candidate": float(np.exp(nll_candidate)),
        "ppl_reference": float(np.exp(nll_reference)),
        "ppl_ratio": float(np.exp(nll_candidate - nll_reference)),
    }


def quality_figures(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    token_ids: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """The quantized ``candidate_logits`` against full-precision ``reference_logits`` (both
    ``[..., positions, vocab]``): KL per token in float64 (``kl_mean``, ``kl_p99``,
    ``kl_max``), ``top1_agreement``, ``top5_overlap`` (mean shared / 5; also its Jaccard and
    rank agreement), and with ``token_ids`` (``[..., positions]``, a real text) each side's
    perplexity and ``ppl_ratio``. ``mask`` (``[..., positions]``, 0 for padding) leaves
    padding out; ``nonfinite`` counts what is left (positions among the real rows)."""
    if reference_logits.shape != candidate_logits.shape:
        raise ValueError(
            f"logit shapes differ: {reference_logits.shape} vs {candidate_logits.shape}"
        )
    if mask is not None and np.shape(mask) != reference_logits.shape[:-1]:
        raise ValueError(f"mask {np.shape(mask)} does not match {reference_logits.shape[:-1]}")
    ref, cand = _rows(reference_logits, mask), _rows(candidate_logits, mask)
    if not len(ref):
        raise ValueError("every position is masked: nothing to compare")
    found = nonfinite(ref, cand)
    with np.errstate(all="ignore"):  # non-finite values: NaN figures, failed by `found`
        kl = metrics.kl_per_token(ref, cand)
        figures = {
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.percentile(kl, 99)),
            "kl_max": float(kl.max()),
            "top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
            **metrics.top_k_agreement(ref, cand, TOP_K),
        }
        if token_ids is not None:
            figures |= perplexities(candidate_logits, reference_logits, token_ids, mask)
    return {**figures, "tokens": len(ref), "nonfinite": found}


def greedy_prefix(candidate_tokens: Sequence[int], reference_tokens: Sequence[int]) -> int:
    """How many leading tokens two greedy decodes (of one prompt) share: the first
    difference's step, or the shorter length when there is none."""
    cand, ref = np.asarray(candidate_tokens), np.asarray(reference_tokens)
    if cand.ndim != 1 or ref.ndim != 1:
        raise ValueError(f"one decode each, 1-D: got {cand.shape} and {ref.shape}")
    n = min(len(cand), len(ref))
    differ = np.flatnonzero(cand[:n] != ref[:n])
    return int(differ[0]) if len(differ) else n


def quality_gate(figures: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The failed quality gates, one line each naming the figure, its value and the bound
    (``metrics.check_gates``); a key ``thresholds`` lacks is not gated, a gated figure that
    ``figures`` lacks fails."""
    unknown = sorted(set(thresholds) - set(QUALITY_GATES))
    if unknown:
        raise ValueError(f"unknown quality gates {unknown} (known: {sorted(QUALITY_GATES)})")
    return metrics.check_gates(figures, thresholds, QUALITY_GATES)
