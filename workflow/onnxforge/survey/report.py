"""The survey's result: a Markdown table of the rows under a header of how they were made,
and a JSON file (``.json`` beside the Markdown) of the same header, counts and rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxforge.driver.catalog import variant_defaults
from onnxforge.survey.settings import PARITY_BATCH, SEQUENCE
from onnxforge.survey.tiny import SHRINK, TINY


def cell(text: Any) -> str:
    """``text`` as one Markdown table cell."""
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def summary_counts(rows: list[dict[str, Any]]) -> str:
    """How many configs got how far, as the report's headline."""
    n = len(rows)
    inst = sum(r["instantiated"] for r in rows)
    exp = sum(r["exported"] for r in rows)
    fixed = sum(r["exported"] and r.get("shape") == "fixed shape" for r in rows)
    par = sum(r["parity"] for r in rows)
    return (
        f"{n} configs: {inst} instantiated, {exp} exported"
        + (f" ({fixed} only with a fixed shape)" if fixed else "")
        + f", {par} parity passed"
    )


def table_row(r: dict[str, Any]) -> str:
    """One config's line of the table."""
    yes = {True: "yes", False: "no"}
    exported = yes[bool(r["exported"])]
    if r["exported"] and r.get("shape") == "fixed shape":
        exported = "yes (fixed shape)"
    max_abs = r.get("metrics", {}).get("max_abs")
    return (
        f"| {r['config']} | {yes[bool(r['instantiated'])]} | {exported} | "
        f"{yes[bool(r['parity'])]} | {'' if max_abs is None else f'{max_abs:.2g}'} | "
        f"{r.get('seconds', '')} | {cell(r.get('error'))} |"
    )


def render_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The whole Markdown report."""
    lines = [
        "# MaxText model configs through onnxforge (tiny, random weights)",
        "",
        f"**{summary_counts(rows)}**",
        "",
        f"- Date: {header['date']}; survey run time {header['seconds']:.0f} s "
        f"({header['jobs']} jobs, timeout {header['timeout']:g} s per config)",
        *([f"- Note: {header['note']}"] if header.get("note") else []),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
        f"- Config dir: `{header['config_dir']}`",
        "- Settings: onnxforge's inference settings "
        f"(`{json.dumps(header['inference_settings'], sort_keys=True)}`), float32",
        f"- Tiny overrides (every config): `{json.dumps(TINY, sort_keys=True)}`; "
        "per config also: kv heads 2 where the config groups queries, experts capped at 4 "
        "with at most 2 per token, q_lora_rank 8 where the config uses one, "
        f"these fields shrunk where set: `{json.dumps(SHRINK, sort_keys=True)}`, "
        "first_num_dense_layers at most 1 and the layer count a whole layer cycle "
        "(inhomogeneous_layer_cycle_interval, interleave_moe_layer_step, nope_layer_interval) "
        "of at least 2; only keys base.yml knows are passed (the JSON has each row's overrides)",
        f"- Weights: seeded normal × 0.05 (norm scales 1 + that); instantiated = one JAX "
        f"forward on ids (1, {SEQUENCE}); exported = jax2onnx opset "
        f"{header.get('opset', variant_defaults()['opset'])} with symbolic "
        f"(batch, sequence), or a fixed (1, {SEQUENCE}) shape when symbolic fails, saved with "
        f"external data; parity = ONNX Runtime CPU vs JAX on seeded ids "
        f"({PARITY_BATCH}, {SEQUENCE}) and (1, {SEQUENCE}), gates {header['gates']}",
        "",
        "| config | instantiated | exported | parity passed | max_abs | seconds | first error |",
        "|---|---|---|---|---|---|---|",
        *map(table_row, rows),
    ]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], out: Path, header: dict[str, Any]) -> None:
    """``out`` (Markdown) and ``out`` with suffix ``.json``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(rows, header))
    out.with_suffix(".json").write_text(
        json.dumps(
            {"header": header, "counts": summary_counts(rows), "rows": rows},
            indent=1,
            default=str,
        )
    )
