"""Where two implementations part: per-layer taps compared, and the first divergence named.

Each side (JAX, the debug ONNX export, transformers) gives the same taps on the same input:
per decoder layer the attention block's output (before the residual add), the MLP or MoE
block's output, the layer's output, and for MoE layers the router's logits and the chosen
top-k experts. The first layer whose taps leave the tolerance is where the fault is (what
follows inherits it); within it, the attention block comes before the MLP, and in a MoE the
router before the experts' math.

NumPy only: the driver and every environment can read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxforge.families.taps import FINAL_PARTS, final_tap, is_final, parse_tap


def compare_hidden(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference, ``rel`` (max abs over the reference's largest
    magnitude: scale-free, what the tolerance bounds) and the minimum cosine over tokens."""
    ref = np.asarray(reference, np.float64).reshape(-1, reference.shape[-1])
    cand = np.asarray(candidate, np.float64).reshape(-1, candidate.shape[-1])
    with np.errstate(all="ignore"):
        diff = np.abs(ref - cand)
        scale = float(np.abs(ref).max()) or 1.0
        cosine = np.sum(ref * cand, -1) / (
            np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1) + 1e-30
        )
        return {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "rel": float(diff.max() / scale),
            "min_cosine": float(cosine.min()),
        }


def compare_experts(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Share of tokens whose top-k expert sets are identical, and the mean Jaccard of the
    sets (order within the top k does not count)."""
    ref = np.asarray(reference).reshape(-1, reference.shape[-1])
    cand = np.asarray(candidate).reshape(-1, candidate.shape[-1])
    same, jaccard = [], []
    for a, b in zip(ref.tolist(), cand.tolist(), strict=True):
        a, b = set(a), set(b)
        same.append(a == b)
        jaccard.append(len(a & b) / len(a | b))
    return {"identical": float(np.mean(same)), "jaccard": float(np.mean(jaccard))}


def compare_taps(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tolerance: float
) -> dict[str, Any]:
    """Per layer, every tap both sides have compared; and the first divergence (or None)."""
    both = reference.keys() & candidate.keys()
    layers: dict[int, dict[str, Any]] = {}
    for name in sorted((n for n in both if not is_final(n)), key=parse_tap):
        layer, part = parse_tap(name)
        compare = compare_experts if part == "experts" else compare_hidden
        layers.setdefault(layer, {"layer": layer})[part] = compare(reference[name], candidate[name])
    per_layer = [layers[i] for i in sorted(layers)]
    final = {
        part: compare_hidden(reference[final_tap(part)], candidate[final_tap(part)])
        for part in FINAL_PARTS
        if final_tap(part) in both
    }
    first = first_divergence(per_layer, tolerance) or final_divergence(final, tolerance)
    return {
        "tolerance": tolerance,
        "layers": per_layer,
        "final": final,
        "first_divergence": first,
        "sentence": describe(first),
    }


def final_divergence(final: dict[str, Any], tolerance: float) -> dict[str, Any] | None:
    """When every layer agrees: the final norm, else the LM head (tied: the embedding table
    read as the head), in that order; ``None`` when both agree (what is left is the final
    logit soft cap, which the logits' own comparison shows)."""
    for part in FINAL_PARTS:
        if _leaves(final.get(part), tolerance):
            return {"layer": "final", "moe": False, "part": part, "figures": final[part]}
    return None


def _leaves(figures: dict[str, Any] | None, tolerance: float) -> bool:
    # NaN leaves too: a comparison that is not finite is not within anything.
    return figures is not None and not figures["rel"] <= tolerance


def first_divergence(per_layer: list[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """The first layer leaving ``tolerance`` and the part that does, in the order the layer
    computes them: attention, then (MoE) routing, then the MLP or experts' math, then what
    is left of the layer (its residual adds and norms)."""
    for figures in per_layer:
        moe = "router_logits" in figures or "experts" in figures
        found = {"layer": figures["layer"], "moe": moe}
        if _leaves(figures.get("attention"), tolerance):
            return found | {"part": "attention", "figures": figures["attention"]}
        routing_differs = _leaves(figures.get("router_logits"), tolerance) or (
            "experts" in figures and figures["experts"]["identical"] < 1.0
        )
        if moe and routing_differs:
            return found | {"part": "routing", "figures": figures}
        if _leaves(figures.get("mlp"), tolerance):
            return found | {"part": "experts" if moe else "mlp", "figures": figures}
        if _leaves(figures.get("output"), tolerance):
            return found | {"part": "residual", "figures": figures["output"]}
    return None


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def describe(first: dict[str, Any] | None) -> str:
    """One sentence a person can act on, e.g. ``first divergence: layer 1 MoE expert math
    (routing agrees 100%, expert output max abs 3e-02)``."""
    if first is None:
        return "no divergence: every layer, the final norm and the LM head within tolerance"
    layer, part, figures = first["layer"], first["part"], first["figures"]
    if layer == "final":
        where = "the final norm" if part == "norm" else "the LM head (tied: the embedding)"
        return (
            f"every layer agrees; first divergence: {where} (max abs {figures['max_abs']:.1e}, "
            f"relative {figures['rel']:.1e}, min cosine {figures['min_cosine']:.4f})"
        )
    head = f"first divergence: layer {layer}"
    if part == "attention":
        return (
            f"{head} attention (attention output max abs {figures['max_abs']:.1e}, "
            f"relative {figures['rel']:.1e}, min cosine {figures['min_cosine']:.4f})"
        )
    if part == "residual":
        return f"{head} residual/norm (layer output max abs {figures['max_abs']:.1e})"
    experts = figures.get("experts", {})
    routing = (
        f"routing agrees {_percent(experts['identical'])} (Jaccard {experts['jaccard']:.2f})"
        if experts
        else "routing not tapped"
    )
    router = figures.get("router_logits")
    router_text = f", router logits max abs {router['max_abs']:.1e}" if router else ""
    if part == "routing":
        return f"{head} MoE routing ({routing}{router_text})"
    mlp = figures["mlp"]
    if part == "experts":
        return f"{head} MoE expert math ({routing}, expert output max abs {mlp['max_abs']:.1e})"
    return f"{head} MLP (MLP output max abs {mlp['max_abs']:.1e}, relative {mlp['rel']:.1e})"
