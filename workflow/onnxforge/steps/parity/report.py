"""A parity report a person can read: the verdict on the first line, then the figures behind
it, as markdown (report.md) and as one self-contained HTML page (report.html, plots inline).

Both are rendered from one list of sections (``SECTIONS``): each is a function of the report
dict that returns a ``Section`` (or None when it has nothing to say). A new comparison adds
its function to the list and shows up in both formats.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COLUMNS = (
    "max_abs",
    "mean_abs",
    "min_cosine",
    "kl_mean",
    "kl_max",
    "top1_agreement",
    "top5_overlap",
    "top10_overlap",
    "top10_jaccard",
    "top10_rank_agreement",
)


@dataclass
class Section:
    """A titled block: paragraphs, bullet items, one table (header + rows), plots (names of
    ``plots.PLOTS``, drawn in the HTML only)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def verdict_line(report: dict[str, Any]) -> str:
    """The first line of every report: ``PASS`` or ``FAIL``, then the target."""
    return f"{report['status']}: {report.get('target', '')} parity ({report['dtype']})"


def _failures(report: dict[str, Any]) -> Section | None:
    if not report["failures"]:
        return None
    return Section("Failed gates", items=list(report["failures"]))


def _gates(report: dict[str, Any]) -> Section:
    gates = ", ".join(f"{k} {v:g}" for k, v in report["gates"].items())
    inputs = ", ".join(f"{name} {shape}" for name, shape in report["inputs"].items())
    return Section(
        "Gates and inputs",
        paragraphs=[
            f"Gates ({report['dtype']}, {report['provider']}): {gates}.",
            f"Inputs: {inputs}.",
        ],
    )


def _diagnosis(report: dict[str, Any]) -> Section | None:
    found = report.get("diagnosis")
    if not found:
        return None
    items = [f"{name}: {c['sentence']}" for name, c in found["comparisons"].items()]
    return Section(
        "Diagnosis (per-layer taps)",
        paragraphs=[
            f"On input {found.get('input', '')}; a layer leaves the tolerance when its max abs "
            f"difference over the reference's largest magnitude exceeds {found['tolerance']:g}."
        ],
        items=items,
        plots=["layer_error", "expert_agreement"],
    )


def _comparison(name: str) -> Callable[[dict[str, Any]], Section | None]:
    def section(report: dict[str, Any]) -> Section | None:
        per_input = report["comparisons"].get(name)
        if per_input is None:
            return None
        rows = [[n, *(m.get(c) for c in COLUMNS)] for n, m in per_input.items()]
        return Section(name, header=["input", *COLUMNS], rows=rows)

    return section


def _kl(report: dict[str, Any]) -> Section | None:
    if "kl_per_token" not in report:
        return None
    return Section(
        "KL divergence per token position",
        paragraphs=[f"On input {report['kl_per_token']['input']}."],
        plots=["kl_per_token"],
    )


def _decode(report: dict[str, Any]) -> Section:
    decode = report["decode"]
    text = decode.get("text", {})
    sides = [("prompt", "prompt"), ("ONNX Runtime", "onnx"), ("JAX", "jax")]
    if "reference" in decode:
        sides.append(("reference", "reference"))
    rows = [[label, decode[key], text.get(key, "")] for label, key in sides]
    agree = f"ONNX Runtime = JAX: {decode['agree']}"
    if "reference_agrees" in decode:
        agree += f"; JAX = reference: {decode['reference_agrees']}"
    return Section(
        "Greedy decode", paragraphs=[agree + "."], header=["side", "tokens", "text"], rows=rows
    )


def _layers(name: str) -> Callable[[dict[str, Any]], Section | None]:
    def section(report: dict[str, Any]) -> Section | None:
        found = report.get("diagnosis", {}).get("comparisons", {}).get(name)
        if not found:
            return None
        rows = []
        for figures in found["layers"]:
            rel = [figures.get(p, {}).get("rel") for p in ("attention", "mlp", "output")]
            router = figures.get("router_logits", {}).get("max_abs")
            experts = figures.get("experts", {})
            rows.append(
                [figures["layer"], *rel, router, experts.get("identical"), experts.get("jaccard")]
            )
        for part, figures in found.get("final", {}).items():  # past the last layer
            label = "final norm" if part == "norm" else "LM head"
            rows.append([label, None, None, figures["rel"], None, None, None])
        header = ["layer", "attention rel", "mlp rel", "output rel", "router max abs"]
        return Section(
            f"Per layer: {name}",
            paragraphs=[found["sentence"]],
            header=[*header, "experts identical", "experts Jaccard"],
            rows=rows,
        )

    return section


def _generation(report: dict[str, Any]) -> Section | None:
    """A KV export's four generation gates (``generation.gates``)."""
    found = report.get("generation")
    if not found:
        return None
    columns = ("max_abs", "kl_max", "top1_agreement")
    rows = [
        [name, *(record["summary"].get(c) for c in columns), record["passed"]]
        for name, record in found.items()
    ]
    decode, batch = found["decode_vs_reference"], found["left_padded_batch"]
    return Section(
        "Generation (KV cache, ONNX Runtime)",
        items=[
            f"greedy decode: {decode['steps']} tokens after a {len(decode['prompt'])}-token "
            f"prompt (length {decode['length']}; sliding window "
            f"{decode['sliding_window'] or 'none'}, past it: {decode['past_window']}); tokens "
            f"agree with transformers: {decode['agree']}",
            f"ONNX: {decode['onnx']}",
            f"transformers: {decode['reference']}",
            f"left-padded batch of prompts of lengths {batch['lengths']}, {batch['steps']} "
            "steps, vs each alone",
            *([report["genai"]] if "genai" in report else []),
        ],
        header=["gate", *columns, "passed"],
        rows=rows,
    )


QUALITY_FIGURES = (
    "kl_mean",
    "kl_p99",
    "top1_agreement",
    "top5_overlap",
    "ppl_ratio",
    "greedy_prefix",
)


def _exactness(report: dict[str, Any]) -> Section | None:
    """A quantized target's first gate (``parity/quantized.py``): its weights, and ONNX Runtime
    at level 1 against JAX on them (the table ``onnx_vs_jax`` above)."""
    found = report.get("exactness")
    if not found:
        return None
    weights = found["weights"]
    level = report["quantization"]["exact_accuracy_level"]
    rows = [[name, gate["passed"]] for name, gate in found["generation"].items()]
    return Section(
        "Exactness (quantized weights)",
        paragraphs=[
            f"ONNX Runtime at accuracy level {level} against JAX run with the weights the "
            "graph holds, dequantized (table onnx_vs_jax); the KV generation gates below take "
            "JAX's decode as their reference."
        ],
        items=[
            f"weights: {weights['checked']} quantized weights each within one quantization "
            f"step of the float weight it replaced (at most {weights['bound']:.3g} of its "
            f"block's largest); the farthest: {weights['worst']['weight']} at "
            f"{fmt(weights['worst']['error'])}",
            *weights["failures"],
        ],
        header=["generation gate", "passed"],
        rows=rows,
    )


def _quality(report: dict[str, Any]) -> Section | None:
    """A quantized target's second gate: the graph as deployed against transformers."""
    found = report.get("quality")
    if not found:
        return None
    gates = found["gates"] or {}
    bounds = {figure: bound for figure, bound in _bounds(gates).items()}
    rows = [
        [
            figure,
            found["overall"].get(figure),
            found["weights_only"].get(figure),
            bounds.get(figure, ""),
        ]
        for figure in QUALITY_FIGURES
    ]
    verdict = "gated" if found["gated"] else "reported, not gated (random weights)"
    level = report["quantization"]["settings"]["accuracy_level"]
    deployed = found["deployed_vs_exact"]
    return Section(
        "Quality against transformers (full precision)",
        paragraphs=[
            f"The graph as deployed (accuracy level {level}) on every input, the worst over "
            f"them; the greedy prefix over the {found['overall']['greedy_tokens']}-token "
            f"decode. Quality is {verdict}. Level {level} against level 1: max abs "
            f"{fmt(deployed.get('max_abs'))}, top-1 {fmt(deployed.get('top1_agreement'))}."
        ],
        items=list(found["failures"]),
        header=["figure", f"as deployed (level {level})", "weights only (level 1)", "gate"],
        rows=rows,
    )


def _bounds(gates: dict[str, float]) -> dict[str, str]:
    """``kl_mean_max: 0.5`` -> ``{"kl_mean": "<= 0.5"}`` (quality.QUALITY_GATES' names)."""
    names = {
        "kl_mean_max": "kl_mean",
        "kl_p99_max": "kl_p99",
        "top1_min": "top1_agreement",
        "top5_min": "top5_overlap",
        "ppl_ratio_max": "ppl_ratio",
        "greedy_prefix_min": "greedy_prefix",
    }
    return {
        names[key]: ("<= " if key.endswith("_max") else ">= ") + f"{value:g}"
        for key, value in gates.items()
        if key in names
    }


def _quantization(report: dict[str, Any]) -> Section | None:
    found = report.get("quantization")
    if not found:
        return None
    done = found["quantized"]
    settings = ", ".join(f"{k} {v}" for k, v in found["settings"].items())
    items = [
        f"settings: {settings}",
        f"MatMuls quantized: {done['matmuls_quantized']} ({done['matmuls_by_bits']} by bits); "
        f"bytes {done['bytes']['before']:,} -> {done['bytes']['after']:,}",
        *(f"kept float: {node}: {why}" for node, why in done["skipped"].items()),
    ]
    for node, errors in done.get("experts", {}).items():
        worst = max(max(errors[w]["relative"]) for w in ("fc1", "fc2"))
        items.append(
            f"QMoE {node}: int{errors['bits']}, block {errors['block_size']}; the worst "
            f"expert's relative requantization error {worst:.3g}"
        )
    return Section("Quantization", items=items)


def _files(report: dict[str, Any]) -> Section | None:
    if "onnx_bytes" not in report:
        return None
    return Section("ONNX files", items=[f"{k}: {v:,} B" for k, v in report["onnx_bytes"].items()])


# The report's sections, in order; another comparison appends its own.
SECTIONS: list[Callable[[dict[str, Any]], Section | None]] = [
    _failures,
    _diagnosis,
    _gates,
    _comparison("onnx_vs_jax"),
    _comparison("jax_vs_reference"),
    _kl,
    _decode,
    _exactness,
    _quality,
    _quantization,
    _generation,
    _layers("onnx_vs_jax"),
    _layers("jax_vs_reference"),
    _files,
]


def sections(report: dict[str, Any]) -> list[Section]:
    return [s for make in SECTIONS if (s := make(report)) is not None]


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {verdict_line(report)}", ""]
    for section in sections(report):
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.items:
            lines += [f"- {item}" for item in section.items] + [""]
        if section.header:
            lines.append("| " + " | ".join(section.header) + " |")
            lines.append("|---" * len(section.header) + "|")
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in section.rows]
            lines.append("")
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
.verdict{font-size:2em;font-weight:bold;padding:.4em .6em;border-radius:.3em;color:#fff}
.PASS{background:#2a7d2a}.FAIL{background:#b22222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
"""


def render_html(report: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """One page, no outside files: ``images`` maps plot names to base64 PNG data."""
    images = images or {}
    esc = html.escape
    status = esc(report["status"])
    body = [f'<div class="verdict {status}" id="verdict">{esc(verdict_line(report))}</div>']
    for section in sections(report):
        body.append(f"<h2>{esc(section.title)}</h2>")
        body += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        if section.items:
            body.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in section.items) + "</ul>")
        if section.header:
            head = "".join(f"<th>{esc(h)}</th>" for h in section.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
                for row in section.rows
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        for plot in section.plots:
            if plot in images:
                body.append(f'<img alt="{esc(plot)}" src="data:image/png;base64,{images[plot]}">')
    title = esc(verdict_line(report))
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
