"""Tests the family registry generates: every example of every family is synthesized, staged,
exported and verified through the real DAG (PASS); a dense and a MoE example of each family
fail their gate once the family has perturbed one staged tensor (FAIL). A new family or
architecture brings its examples, and so its tests."""

from __future__ import annotations

import json

import pytest

from onnxforge.core import paths
from onnxforge.families import FAMILIES
from registry import (
    CLEAN,
    CONFIG,
    EXAMPLES,
    PERTURBED,
    crosschecks,
    example_params,
    python_for,
    target,
    variant_params,
)

pytestmark = pytest.mark.dag


def test_every_family_declares_examples_and_config_builds_them_by_default():
    assert {family.name for family, _ in EXAMPLES} == set(FAMILIES)
    names = [example.name for _, example in EXAMPLES]
    assert len(names) == len(set(names))
    # `make run` builds the registry's examples: the catalog puts each in (catalog.with_examples).
    defaults = {(t["model"], t["checkpoint"], t["variant"]) for t in CONFIG["targets"]}
    for family, example in EXAMPLES:
        assert (example.name, "hf", "f32") in defaults, example.name
        entry = CONFIG["models"][example.name]
        assert entry["family"] == family.name
        assert entry["checkpoints"]["hf"]["source"] == example.source
        assert entry.get("options", {}) == example.options
    # ... and crosschecks every checkpoint that several implementations build.
    assert CONFIG["crosschecks"] == crosschecks()


@pytest.mark.parametrize(("family", "example", "variant"), variant_params())
def test_example_passes_every_gate_in_each_variant_it_declares(
    registry_build, family, example, variant
):
    t = target(example, variant)
    report = json.loads((registry_build / t.parity / paths.REPORT_JSON).read_text())
    assert report["status"] == "PASS", report["failures"]
    for comparison in ("onnx_vs_jax", "jax_vs_reference"):
        summary = report["summary"][comparison]
        assert summary["max_abs"] < 1e-3 and summary["kl_max"] < 1e-4, comparison
    assert report["inputs"][f"long_1x{CONFIG['parity']['long_tokens']}"]
    assert report["decode"]["agree"] and len(report["decode"]["onnx"]) >= 8
    stage = json.loads((registry_build / t.stage / "manifest.json").read_text())
    assert stage["environment"]["lock"] == f"{family.environment}.lock.txt"
    assert stage["family"] == family.name
    released = {p.name for p in (registry_build / t.release).iterdir()}
    assert set(paths.RELEASED) | {"manifest.json"} <= released
    if CONFIG["variants"][variant]["decoder"] == "kv":  # the four generation gates too
        assert all(gate["passed"] for gate in report["generation"].values()), report["generation"]
        assert "genai_config.json" in released
    python_for(family)  # the environment the jobs ran in exists


@pytest.mark.parametrize(("family", "example"), example_params(only=PERTURBED))
def test_a_perturbed_stage_fails_the_gate_and_is_not_released(perturbed_build, family, example):
    workdir, perturbed = perturbed_build
    assert perturbed[target(example).name]  # the family named the tensor it scaled
    t = target(example)
    report = json.loads((workdir / t.parity / paths.REPORT_JSON).read_text())
    assert report["status"] == "FAIL"
    assert any(f.startswith("jax_vs_reference") for f in report["failures"]), report["failures"]
    assert report["summary"]["onnx_vs_jax"]["max_abs"] < 1e-3  # ONNX follows the bad weights
    assert not (workdir / t.passed).exists()
    assert not (workdir / t.release).exists()


@pytest.mark.parametrize("name", list(crosschecks()))
def test_implementations_of_one_checkpoint_agree(registry_build, name):
    report = json.loads((registry_build / crosscheck_report(name)).read_text())
    assert report["status"] == "PASS", report["failures"]
    assert report["agreement"].startswith("all 3 agree")  # two implementations + transformers
    families = {i["family"] for i in report["implementations"]}
    assert len(families) == len(report["implementations"]) == 2
    assert report["weights"]  # the same safetensors, by sha256
    assert (registry_build / paths.CROSSCHECK_PASSED.format(name=name)).exists()


@pytest.mark.parametrize("name", list(crosschecks()))
def test_a_crosscheck_names_the_perturbed_implementation_as_the_odd_one_out(perturbed_build, name):
    workdir, _ = perturbed_build
    report = json.loads((workdir / crosscheck_report(name)).read_text())
    assert report["status"] == "FAIL"
    clean, perturbed = report["implementations"]  # the twin's clean copy, a perturbed one
    assert clean["target"].split("/")[1] == CLEAN
    assert report["agreement"].startswith(
        f"{perturbed['target']} ({perturbed['family']}) is the odd one out"
    )
    assert not (workdir / paths.CROSSCHECK_PASSED.format(name=name)).exists()


def crosscheck_report(name: str) -> str:
    return f"{paths.CROSSCHECK.format(name=name)}/{paths.REPORT_JSON}"
