"""The report's plots (matplotlib, PNG): per-layer error, KL per token position, expert
agreement per layer. Each is a function of the report dict; none draws what it lacks."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

FLOOR = 1e-16  # log axes: exact agreement is drawn at the floor


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7, 3.2), dpi=90)


def _layer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    from matplotlib import pyplot

    buffer = io.BytesIO()
    fig.tight_layout()
    # No "Software" entry: the same figures give the same bytes with any matplotlib.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    pyplot.close(fig)
    return buffer.getvalue()


def _diagnosed(report: dict[str, Any]) -> dict[str, Any]:
    return report.get("diagnosis", {}).get("comparisons", {})


def layer_error(report: dict[str, Any]) -> bytes | None:
    comparisons = _diagnosed(report)
    if not comparisons:
        return None
    fig, ax = _figure()
    for name, found in comparisons.items():
        layers = [f["layer"] for f in found["layers"]]
        for part, style in (("output", "-o"), ("attention", ":^"), ("mlp", "--s")):
            values = [max(f.get(part, {}).get("rel", np.nan), FLOOR) for f in found["layers"]]
            ax.plot(layers, values, style, label=f"{name} {part}")
    ax.axhline(report["diagnosis"]["tolerance"], color="red", lw=1, label="tolerance")
    ax.set(yscale="log", xlabel="layer", ylabel="max abs diff / max |ref|")
    _layer_axis(ax)
    ax.set_title("Per-layer error")
    ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def kl_per_token(report: dict[str, Any]) -> bytes | None:
    curves = report.get("kl_per_token")
    if not curves:
        return None
    fig, ax = _figure()
    for name, values in curves.items():
        if name != "input":
            ax.plot(np.maximum(np.asarray(values, float), FLOOR), lw=1, label=name)
    ax.set(yscale="log", xlabel="token position", ylabel="KL(reference || candidate)")
    ax.set_title(f"KL per token position ({curves['input']})")
    ax.legend(fontsize=7)
    return _png(fig)


def expert_agreement(report: dict[str, Any]) -> bytes | None:
    comparisons = _diagnosed(report)
    series = {
        name: [(f["layer"], f["experts"]["identical"]) for f in found["layers"] if "experts" in f]
        for name, found in comparisons.items()
    }
    if not any(series.values()):
        return None
    fig, ax = _figure()
    width = 0.8 / len(series)
    for k, (name, points) in enumerate(series.items()):
        layers = np.asarray([p[0] for p in points], float) + (k - (len(series) - 1) / 2) * width
        ax.bar(layers, [p[1] for p in points], width=width, label=name)
    ax.set(ylim=(0, 1.05), xlabel="layer", ylabel="tokens with the same top-k experts")
    _layer_axis(ax)
    ax.set_title("Expert agreement per layer")
    ax.legend(fontsize=7)
    return _png(fig)


PLOTS = {
    "layer_error": layer_error,
    "kl_per_token": kl_per_token,
    "expert_agreement": expert_agreement,
}


def images(report: dict[str, Any]) -> dict[str, str]:
    """Every plot the report has data for, as base64 PNG (for ``report.render_html``)."""
    drawn = {name: draw(report) for name, draw in PLOTS.items()}
    return {name: base64.b64encode(png).decode() for name, png in drawn.items() if png}
