"""A parity report a person can read: verdict first, then the figures behind it."""

from __future__ import annotations

from typing import Any

_COLUMNS = (
    "max_abs",
    "mean_abs",
    "min_cosine",
    "kl_mean",
    "kl_max",
    "top1_agreement",
    "top5_overlap",
)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Parity report: {report.get('target', '')}",
        "",
        f"**{report['status']}** ({report['dtype']}; gates: "
        + ", ".join(f"{k} {v:g}" for k, v in report["gates"].items())
        + ")",
        "",
    ]
    if report["failures"]:
        lines += ["## Failed gates", ""] + [f"- {f}" for f in report["failures"]] + [""]
    for name, per_input in report["comparisons"].items():
        lines += [f"## {name}", "", "| input | " + " | ".join(_COLUMNS) + " |"]
        lines += ["|---" * (len(_COLUMNS) + 1) + "|"]
        for input_name, metrics in per_input.items():
            cells = [_fmt(metrics.get(c, "")) for c in _COLUMNS]
            lines.append(f"| {input_name} | " + " | ".join(cells) + " |")
        lines.append("")
    decode = report["decode"]
    lines += [
        "## Greedy decode (ONNX Runtime vs JAX)",
        "",
        f"- prompt: {decode['prompt']}",
        f"- ONNX: {decode['onnx']}",
        f"- JAX:  {decode['jax']}",
        f"- agree: {decode['agree']}",
        "",
    ]
    if "generation" in report:
        from onnxforge.generation import markdown_lines

        lines += markdown_lines(report["generation"])
    if "onnx_bytes" in report:
        sizes = ", ".join(f"{k} {v:,} B" for k, v in report["onnx_bytes"].items())
        lines += [f"ONNX files: {sizes}", ""]
    return "\n".join(lines)
