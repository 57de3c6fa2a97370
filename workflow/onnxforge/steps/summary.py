"""``results/index.html`` and ``index.json``: one line per target built, read from what the
steps left (each parity report, the Snakemake benchmark files, the releases).

Every parity report under ``results/`` counts, passed or failed, whatever command built it.
Driver-side: no JAX, only the standard library.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any

from onnxforge.core import outputs, paths

# The steps whose benchmark files (logs/<step>.benchmark.tsv) the index shows.
STEPS = ("download", "stage", "export", "parity")  # the timed columns of paths.TARGET_STEPS
WORST = (("max_abs", "max abs"), ("kl_max", "KL max"), ("top1_agreement", "top-1"))


def _benchmark(path: Path) -> dict[str, float] | None:
    """Seconds and peak resident memory (MB) from a Snakemake benchmark file."""
    if not path.exists():
        return None
    with path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        return None

    def number(key: str) -> float | None:
        try:
            return float(rows[-1][key])
        except (KeyError, TypeError, ValueError):
            return None

    return {"seconds": number("s"), "max_rss_mb": number("max_rss")}


def target_entry(results: Path, report_json: Path) -> dict[str, Any]:
    report = json.loads(report_json.read_text())
    parity_dir = report_json.parent
    variant, model_dir = parity_dir.name, parity_dir.parents[1]
    target = paths.Target(model_dir.parent.name, model_dir.name, variant)
    steps = {step: _benchmark(results.parent / target.log(step, paths.BENCHMARK)) for step in STEPS}
    release = results.parent / target.release

    def link(path: Path) -> str | None:
        return os.path.relpath(path, results) if path.exists() else None

    diagnosis = report.get("diagnosis", {}).get("comparisons", {})
    return {
        "model": target.model,
        "checkpoint": target.checkpoint,
        "variant": variant,
        "status": report["status"],
        "dtype": report.get("dtype"),
        "failures": report.get("failures", []),
        "worst": {
            name: {key: summary.get(key) for key, _ in WORST}
            for name, summary in report.get("summary", {}).items()
        },
        "diagnosis": {name: found["sentence"] for name, found in diagnosis.items()},
        "onnx_bytes": sum(report.get("onnx_bytes", {}).values()),
        "steps": steps,
        "links": {
            "report_html": link(parity_dir / paths.REPORT_HTML),
            "report_md": link(parity_dir / paths.REPORT_MD),
            "release": link(release),
        },
    }


def collect(results: Path) -> list[dict[str, Any]]:
    reports = sorted(Path(results).glob(f"*/*/parity/*/{paths.REPORT_JSON}"))
    return [target_entry(Path(results), path) for path in reports]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#eee}.PASS{background:#cfc;font-weight:bold}.FAIL{background:#fcc;font-weight:bold}
"""


def render_html(entries: list[dict[str, Any]]) -> str:
    esc = html.escape
    passed = sum(e["status"] == "PASS" for e in entries)
    verdict = "PASS" if entries and passed == len(entries) else "FAIL"
    header = ["model", "checkpoint", "variant", "verdict"]
    comparisons = sorted({name for e in entries for name in e["worst"]})
    header += [f"{c} {label}" for c in comparisons for _, label in WORST]
    header += ["ONNX bytes"] + [f"{s} s / MB" for s in STEPS]
    header += ["diagnosis", "links"]
    rows = []
    for e in entries:
        cells = [esc(e["model"]), esc(e["checkpoint"]), esc(e["variant"])]
        cells.append(f'<span class="{esc(e["status"])}">{esc(e["status"])}</span>')
        cells += [
            esc(_fmt(e["worst"].get(c, {}).get(key))) for c in comparisons for key, _ in WORST
        ]
        cells.append(f"{e['onnx_bytes']:,}")
        for step in STEPS:
            figures = e["steps"].get(step) or {}
            cells.append(
                esc(f"{_fmt(figures.get('seconds'))} / {_fmt(figures.get('max_rss_mb'))}")
                if figures
                else ""
            )
        cells.append("<br>".join(esc(f"{k}: {v}") for k, v in e["diagnosis"].items()))
        links = [
            f'<a href="{esc(path)}">{label}</a>'
            for label, path in (
                ("report", e["links"]["report_html"]),
                ("md", e["links"]["report_md"]),
                ("release", e["links"]["release"]),
            )
            if path
        ]
        cells.append(" ".join(links))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    title = f"{verdict}: {passed} of {len(entries)} targets passed"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n"
        f'<h1 id="verdict" class="{verdict}">{esc(title)}</h1>\n<table><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in header)
        + "</tr>\n"
        + "\n".join(rows)
        + "\n</table>\n</body></html>\n"
    )


def write_index(results: Path, out_html: Path) -> Path:
    """Write ``index.json`` and ``index.html`` (next to each other, write then rename)."""
    entries = collect(results)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_json(out_html.with_name("index.json"), {"targets": entries})
    tmp = out_html.with_name(f".{out_html.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(entries))
    os.replace(tmp, out_html)
    return out_html
