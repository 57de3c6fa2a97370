"""The diagnosis names the first layer and part that leave the tolerance; the reports put the
verdict first; the index lists every report. Pure NumPy and text: no model runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxforge.families import taps as tap_names
from onnxforge.families.taps import tap
from onnxforge.steps import summary
from onnxforge.steps.parity import diagnosis, plots, report

TOLERANCE = 1e-3


def taps(layers: int = 3, moe: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    found = {}
    for i in range(layers):
        for part in tap_names.HIDDEN_PARTS:
            found[tap(i, part)] = rng.normal(size=(1, 12, 8))
        if moe:
            found[tap(i, "router_logits")] = rng.normal(size=(12, 4))
            found[tap(i, "experts")] = np.argsort(-found[tap(i, "router_logits")], -1)[:, :2]
    return found


def diverged(found: dict, layer: int, parts: tuple[str, ...]) -> dict:
    """``found`` with ``parts`` of ``layer`` and every later layer's taps changed."""
    out = {name: value.copy() for name, value in found.items()}
    for name in out:
        i, part = tap_names.parse_tap(name)
        if (i == layer and part in parts) or i > layer:
            if part == "experts":
                out[name] = (out[name] + 1) % 4
            else:
                out[name] = out[name] * 1.1
    return out


@pytest.mark.parametrize(
    ("parts", "named"),
    [
        (("attention", "mlp", "output", "router_logits", "experts"), "layer 1 attention"),
        (("mlp", "output"), "layer 1 MoE expert math (routing agrees 100%"),
        (("router_logits", "mlp", "output"), "layer 1 MoE routing (routing agrees 100%"),
        (("router_logits", "experts", "mlp", "output"), "layer 1 MoE routing (routing agrees 0%"),
    ],
)
def test_the_first_divergence_names_the_layer_and_part(parts, named):
    reference = taps()
    found = diagnosis.compare_taps(reference, diverged(reference, 1, parts), TOLERANCE)
    assert found["first_divergence"]["layer"] == 1
    assert found["sentence"].startswith("first divergence: " + named), found["sentence"]
    assert [f["layer"] for f in found["layers"]] == [0, 1, 2]
    assert found["layers"][0]["output"]["rel"] == 0


def test_a_dense_layer_names_its_mlp_and_agreement_names_nothing():
    reference = taps(moe=False)
    found = diagnosis.compare_taps(reference, diverged(reference, 0, ("mlp",)), TOLERANCE)
    assert found["sentence"].startswith("first divergence: layer 0 MLP"), found["sentence"]
    same = diagnosis.compare_taps(reference, reference, TOLERANCE)
    assert same["first_divergence"] is None and same["sentence"].startswith("no divergence")


def test_nan_leaves_the_tolerance():
    reference = taps(moe=False)
    candidate = diverged(reference, 5, ())
    candidate[tap(2, "attention")] = np.full_like(reference[tap(2, "attention")], np.nan)
    found = diagnosis.compare_taps(reference, candidate, TOLERANCE)
    assert found["first_divergence"]["layer"] == 2
    assert found["first_divergence"]["part"] == "attention"


def failed_report() -> dict:
    reference = taps()
    compared = diagnosis.compare_taps(reference, diverged(reference, 1, ("mlp",)), TOLERANCE)
    logits = {"max_abs": 0.5, "kl_max": 0.1, "top1_agreement": 0.9, "top10_jaccard": 0.8}
    return {
        "target": "tiny/hf/f32",
        "status": "FAIL",
        "failures": ["jax_vs_reference: max_abs = 0.5, gate requires <= 0.001"],
        "dtype": "float32",
        "provider": "cpu",
        "gates": {"max_abs": 1e-3},
        "inputs": {"long_1x12": [1, 12]},
        "summary": {"jax_vs_reference": logits},
        "comparisons": {"jax_vs_reference": {"long_1x12": logits}},
        "kl_per_token": {"input": "long_1x12", "jax_vs_reference": [0.0, 1e-3, 0.1]},
        "decode": {"prompt": [1], "onnx": [2], "jax": [2], "reference": [3], "agree": True},
        "diagnosis": {"tolerance": TOLERANCE, "comparisons": {"jax_vs_reference": compared}},
        "onnx_bytes": {"model.onnx": 10, "model.onnx.data": 20},
    }


def test_reports_put_the_verdict_first_and_inline_their_plots():
    data = failed_report()
    markdown = report.render_markdown(data)
    assert markdown.splitlines()[0] == "# FAIL: tiny/hf/f32 parity (float32)"
    assert "first divergence: layer 1 MoE expert math" in markdown
    images = plots.images(data)
    assert set(images) == {"layer_error", "kl_per_token", "expert_agreement"}
    page = report.render_html(data, images)
    assert page.index('id="verdict"') < page.index("<h2>")
    assert page.count("data:image/png;base64,") == 3
    assert 'src="http' not in page and "<script" not in page  # self-contained


def test_the_index_lists_every_report_with_its_step_figures(tmp_path):
    results = tmp_path / "results"
    parity = results / "tiny" / "hf" / "parity" / "f32"
    parity.mkdir(parents=True)
    (parity / "report.json").write_text(json.dumps(failed_report()))
    (parity / "report.html").write_text("<html></html>")
    logs = results / "tiny" / "hf" / "logs"
    logs.mkdir()
    (logs / "export-f32.benchmark.tsv").write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t812.3\n")
    index = summary.write_index(results, results / "index.html")
    entries = json.loads((results / "index.json").read_text())["targets"]
    assert [(e["model"], e["status"]) for e in entries] == [("tiny", "FAIL")]
    assert entries[0]["steps"]["export"] == {"seconds": 12.5, "max_rss_mb": 812.3}
    assert entries[0]["steps"]["stage"] is None
    assert entries[0]["links"] == {
        "report_html": "tiny/hf/parity/f32/report.html",
        "report_md": None,
        "release": None,
    }
    page = index.read_text()
    assert "FAIL: 0 of 1 targets passed" in page and "MoE expert math" in page


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (("norm", "lm_head"), "every layer agrees; first divergence: the final norm"),
        (("lm_head",), "every layer agrees; first divergence: the LM head (tied: the embedding)"),
    ],
)
def test_when_every_layer_agrees_the_final_norm_or_lm_head_is_named(changed, named):
    """A fault past the last layer (a tied embedding read as an untied head, the final norm's
    eps): the layers all agree, and the diagnosis still names where the logits part."""
    reference = taps()
    reference[tap_names.final_tap("norm")] = np.random.default_rng(1).normal(size=(1, 12, 8))
    reference[tap_names.final_tap("lm_head")] = np.random.default_rng(2).normal(size=(1, 12, 32))
    candidate = {name: value.copy() for name, value in reference.items()}
    for part in changed:
        candidate[tap_names.final_tap(part)] *= 1.1
    found = diagnosis.compare_taps(reference, candidate, TOLERANCE)
    assert found["sentence"].startswith(named), found["sentence"]
    assert set(found["final"]) == {"norm", "lm_head"}
    agreeing = diagnosis.compare_taps(reference, reference, TOLERANCE)
    assert agreeing["first_divergence"] is None
    assert "the final norm and the LM head within tolerance" in agreeing["sentence"]
