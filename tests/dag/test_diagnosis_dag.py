"""Through the real DAG: a perturbed layer's target fails with a report that names the layer
and the part (attention, a MoE's experts or router, a dense MLP), for a dense and a MoE example
of every family; results/index.html lists every target; `snakemake --report` files the reports; and
headless Chromium renders the index and a report with the verdict showing."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import snakemake
from onnxforge.core import paths
from registry import (
    CLEAN_COPIES,
    EXAMPLES,
    MARKS,
    PERTURBED,
    examples_config,
    perturbed_checkpoints,
    target,
)

pytestmark = pytest.mark.dag

# The part perturbed -> what the diagnosis must name in layer 1.
NAMED = {"attention": "attention", "router": "MoE routing", "expert": "MoE expert math"}


def diagnosis_params() -> list:
    return [
        pytest.param(
            example,
            checkpoint,
            part,
            id=f"{example.name}-{part}",
            marks=MARKS.get(family.environment, []),
        )
        for family, example in EXAMPLES
        for checkpoint, part in perturbed_checkpoints(example).items()
    ]


@pytest.mark.parametrize(("example", "checkpoint", "part"), diagnosis_params())
def test_the_report_names_the_perturbed_layer_and_part(perturbed_build, example, checkpoint, part):
    workdir, _ = perturbed_build
    t = target(example, checkpoint=checkpoint)
    parity = workdir / t.parity
    report = json.loads((parity / paths.REPORT_JSON).read_text())
    assert report["status"] == "FAIL"
    assert any(name.startswith("text_long_1x") for name in report["inputs"])  # real text
    found = report["diagnosis"]["comparisons"]
    named = NAMED.get(part, "MLP")
    sentence = found["jax_vs_reference"]["sentence"]
    assert sentence.startswith(f"first divergence: layer 1 {named}"), sentence
    assert found["jax_vs_reference"]["first_divergence"]["layer"] == 1
    if part == "expert":
        assert "routing agrees 100%" in sentence
    # The debug ONNX export follows the (perturbed) JAX model, layer by layer.
    assert found["onnx_vs_jax"]["first_divergence"] is None, found["onnx_vs_jax"]["sentence"]
    assert f"diagnosis (jax_vs_reference): {sentence}" in report["failures"]
    markdown = (parity / paths.REPORT_MD).read_text()
    assert markdown.startswith(f"# FAIL: {t.name}") and sentence in markdown
    page = (parity / paths.REPORT_HTML).read_text()
    # Per-layer error and KL per position; an MoE's expert agreement per layer too.
    plots = 3 if example.moe else 2
    assert 'id="verdict">FAIL' in page and page.count("data:image/png;base64,") == plots


def test_the_index_lists_every_target_and_snakemake_files_a_report(perturbed_build):
    workdir, perturbed = perturbed_build
    config = examples_config(perturbed=True)
    run = snakemake(workdir, paths.INDEX_HTML, config=config)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    entries = json.loads((workdir / paths.INDEX_JSON).read_text())["targets"]
    listed = {f"{e['model']}/{e['checkpoint']}/{e['variant']}": e for e in entries}
    assert set(perturbed) <= set(listed)
    for name in perturbed:
        assert listed[name]["status"] == "FAIL" and listed[name]["links"]["release"] is None
        assert listed[name]["steps"]["parity"]["seconds"] > 0
        assert (workdir / paths.RESULTS / listed[name]["links"]["report_html"]).exists()
    # Snakemake's report of what those targets' DAG built: each report.html, and the index.
    parities = [paths.Target(*name.split("/")).parity for name in perturbed]
    run = snakemake(workdir, "--report", "report.html", paths.INDEX_HTML, *parities, config=config)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    filed = (workdir / "report.html").read_text(errors="replace")
    for parity in parities:
        assert f'"{parity}/{paths.REPORT_HTML}"' in filed
    assert f'"{paths.INDEX_HTML}"' in filed
    for name in PERTURBED:
        assert f'"model": "{name}"' in filed  # filed under its model


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is missing: `make system-deps` installs it", pytrace=False)
    return found


@pytest.mark.parametrize("page", ["index", "report"])
def test_chromium_renders_the_page_with_its_verdict(perturbed_build, page, tmp_path):
    workdir, _ = perturbed_build
    if page == "index":
        path = workdir / paths.INDEX_HTML
        if not path.exists():
            assert (
                snakemake(workdir, paths.INDEX_HTML, config=examples_config(True)).returncode == 0
            )
        # Only the clean copies and the examples left unperturbed pass.
        unperturbed = [e for _, e in EXAMPLES if not perturbed_checkpoints(e)]
        expected = f"FAIL: {len(CLEAN_COPIES) + len(unperturbed)} of"
    else:
        path = workdir / target(EXAMPLES[0][1]).parity / paths.REPORT_HTML
        expected = "FAIL: "
    screenshot = tmp_path / f"{page}.png"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += ["--window-size=1280,1600", "--virtual-time-budget=5000"]
    shot = subprocess.run(
        [*command, f"--screenshot={screenshot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run(
        [*command, "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    verdict = dom.stdout.split('id="verdict"', 1)[1].split("<", 1)[0]
    assert expected in verdict, verdict
