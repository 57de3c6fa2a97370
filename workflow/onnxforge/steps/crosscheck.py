"""Crosscheck: independent implementations of one checkpoint against each other and the reference.

The same GPT-OSS checkpoint runs as our Flax model (family gpt_oss) and as MaxText's own
GPT-OSS (family maxtext); each target's parity step already gates its JAX model against
transformers. A crosscheck reads the logits those steps kept (``parity.saved_logits``, on the
same ids) and compares every pair: implementation A vs B, and each vs transformers. When a pair
disagrees the crosscheck fails, and its report says which implementation is the odd one out.

It refuses to compare what is not comparable: downloads with other weight files, or parity
runs on other ids (other parity settings).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import outputs, paths
from onnxforge.core.errors import InputError
from onnxforge.steps.parity import metrics

REFERENCE = "transformers"


@dataclass(frozen=True)
class Side:
    """One target of the crosscheck: its name, the family that built it, its step folders."""

    target: str
    family: str
    parity: Path
    download: Path

    @property
    def label(self) -> str:
        return f"{self.target} ({self.family})"


def reference_weights(download: Path) -> dict[str, str]:
    """sha256 of the weight files transformers reads (the top-level *.safetensors), as the
    download step recorded them."""
    recorded = outputs.recorded_hashes(download)
    if recorded is None:
        raise InputError(f"{download}: no manifest.json; the download step did not finish")
    return {
        name: digest
        for name, digest in recorded.items()
        if "/" not in name and name.endswith(".safetensors")
    }


def read_logits(side: Side) -> dict[str, dict[str, np.ndarray]]:
    """{"ids"|"jax"|"reference": {input: array}} from the side's parity folder, inputs in the
    order parity ran them."""
    import json

    from safetensors import safe_open

    path = side.parity / paths.LOGITS_FILE
    if not path.exists():
        raise InputError(
            f"{path}: missing; this parity report predates saved logits: rebuild it "
            f"(snakemake --forcerun parity_report {side.parity})"
        )
    with safe_open(str(path), framework="numpy") as file:
        order = json.loads((file.metadata() or {}).get("inputs", "[]"))
        return {
            kind: {name: file.get_tensor(f"{kind}.{name}") for name in order}
            for kind in ("ids", "jax", "reference")
        }


def common_inputs(sides: list[Side], logits: list[dict]) -> list[str]:
    """The inputs every side kept, in the first side's order; an error where one input's ids
    differ (the targets' parity settings differ)."""
    first = logits[0]["ids"]
    names = [n for n in first if all(n in found["ids"] for found in logits[1:])]
    for side, found in zip(sides[1:], logits[1:], strict=True):
        for name in names:
            if not np.array_equal(first[name], found["ids"][name]):
                raise InputError(
                    f"{side.parity / paths.LOGITS_FILE}: input {name!r} has other token ids "
                    f"than {sides[0].target}'s: give the targets the same parity settings"
                )
    if not names:
        raise InputError(
            f"crosscheck: {', '.join(s.target for s in sides)} kept no input in common"
        )
    return names


def same_checkpoint(sides: list[Side]) -> dict[str, str]:
    """The weight files' sha256s every side's download has; an error where one differs."""
    first = reference_weights(sides[0].download)
    if not first:
        raise InputError(f"{sides[0].download}: no top-level *.safetensors to compare")
    for side in sides[1:]:
        other = reference_weights(side.download)
        if other != first:
            raise InputError(
                f"crosscheck: {side.target}'s checkpoint ({side.download}) is not "
                f"{sides[0].target}'s: the weight files differ "
                f"({sorted(other)} vs {sorted(first)} or their sha256); a crosscheck compares "
                "implementations of the same checkpoint bytes"
            )
    return first


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], names, gates):
    per_input = {n: metrics.compare_logits(reference[n], candidate[n]) for n in names}
    summary = metrics.summarize(per_input)
    return {
        "summary": summary,
        "per_input": per_input,
        "failures": metrics.check_gates(summary, gates),
    }


def odd_one_out(labels: list[str], disagreeing: set[frozenset[str]]) -> str:
    """One sentence on who disagrees with whom."""
    if not disagreeing:
        return f"all {len(labels)} agree: " + ", ".join(labels)
    for label in labels:
        others = [o for o in labels if o != label]
        alone = all(frozenset((label, o)) in disagreeing for o in others)
        rest_agree = not any(
            frozenset(pair) in disagreeing for pair in itertools.combinations(others, 2)
        )
        if alone and rest_agree:
            return (
                f"{label} is the odd one out: it disagrees with {' and '.join(others)}, "
                "which agree with each other"
            )
    if len(disagreeing) == len(labels) * (len(labels) - 1) // 2:
        return f"no two of {', '.join(labels)} agree"
    pairs = sorted(" vs ".join(sorted(pair)) for pair in disagreeing)
    return "these disagree: " + "; ".join(pairs)


def run_crosscheck(name: str, sides: list[Side], gates: dict[str, float]) -> dict[str, Any]:
    weights = same_checkpoint(sides)
    logits = [read_logits(side) for side in sides]
    names = common_inputs(sides, logits)
    # Each side ran transformers on the same bytes and ids (in its own environment's
    # transformers): they must agree too, or the references are not one reference.
    checks = {
        f"{REFERENCE} ({side.target}'s run) vs {REFERENCE} ({sides[0].target}'s run)": compare(
            logits[0]["reference"], found["reference"], names, gates
        )
        for side, found in zip(sides[1:], logits[1:], strict=True)
    }
    outputs_by_label = {side.label: found["jax"] for side, found in zip(sides, logits, strict=True)}
    outputs_by_label[REFERENCE] = logits[0]["reference"]
    labels = list(outputs_by_label)
    comparisons = {}
    disagreeing = set()
    for a, b in itertools.combinations(labels, 2):
        # The reference is the reference side where it is one; else the first listed.
        ref, cand = (b, a) if b == REFERENCE else (a, b)
        result = compare(outputs_by_label[ref], outputs_by_label[cand], names, gates)
        comparisons[f"{cand} vs {ref}"] = result
        if result["failures"]:
            disagreeing.add(frozenset((a, b)))
    failures = [
        f"{pair}: {failure}"
        for pair, result in {**comparisons, **checks}.items()
        for failure in result["failures"]
    ]
    sentence = odd_one_out(labels, disagreeing)
    if disagreeing:
        failures.insert(0, sentence)
    return {
        "status": "FAIL" if failures else "PASS",
        "target": f"{paths.CROSSCHECK_DIR}/{name}",
        "agreement": sentence,
        "failures": failures,
        "gates": gates,
        "implementations": [
            {"target": s.target, "family": s.family, "parity": str(s.parity)} for s in sides
        ],
        "weights": weights,
        "inputs": {n: list(logits[0]["ids"][n].shape) for n in names},
        "comparisons": comparisons,
        "reference_runs": checks,
    }


GATED = ("max_abs", "kl_max", "top1_agreement", "min_cosine")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['status']}: {report['agreement']}", ""]
    lines += [f"Crosscheck `{report['target']}`, gates {report['gates']}.", ""]
    lines += ["| comparison | " + " | ".join(GATED) + " | verdict |"]
    lines += ["|---" * (len(GATED) + 2) + "|"]
    for pair, result in {**report["comparisons"], **report["reference_runs"]}.items():
        cells = [f"{result['summary'][m]:.3g}" for m in GATED]
        verdict = "; ".join(result["failures"]) or "agree"
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "Inputs: " + ", ".join(f"{n} {s}" for n, s in report["inputs"].items()), ""]
    lines += ["Implementations:", ""]
    lines += [f"- {i['target']} ({i['family']}): {i['parity']}" for i in report["implementations"]]
    lines += [
        "",
        "Weights (sha256): " + ", ".join(f"{n} {d[:12]}" for n, d in report["weights"].items()),
    ]
    return "\n".join(lines) + "\n"
