"""Crosscheck (onnxforge.steps.crosscheck): implementations of one checkpoint against each other and
the reference, from the logits their parity steps kept. Fast: parity folders written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from onnxforge.core import outputs, paths
from onnxforge.core.errors import InputError
from onnxforge.driver import catalog
from onnxforge.steps import crosscheck
from onnxforge.steps.parity import parity

GATES = {"max_abs": 1e-3, "kl_max": 1e-4, "top1_min": 1.0}
RNG = np.random.default_rng(0)
IDS = {"short_2x4": RNG.integers(0, 16, (2, 4)), "long_1x8": RNG.integers(0, 16, (1, 8))}
LOGITS = {name: RNG.normal(size=(*ids.shape, 16)).astype(np.float32) for name, ids in IDS.items()}


def side(tmp_path: Path, name: str, family: str, jax_shift=0.0, weights=b"weights", ids=IDS):
    """A finished download (its manifest) and parity folder (its logits) of one target."""
    download = tmp_path / name / "download"
    download.mkdir(parents=True)
    (download / "model.safetensors").write_bytes(weights)
    (download / "config.json").write_text("{}")
    outputs.write_manifest(download, "download", {})
    parity_dir = tmp_path / name / "parity"
    parity_dir.mkdir()
    jax_logits = {n: logits + jax_shift for n, logits in LOGITS.items()}
    parity.write_logits(
        parity_dir / paths.LOGITS_FILE, parity.saved_logits(ids, jax_logits, LOGITS)
    )
    return crosscheck.Side(f"{name}/hf/f32", family, parity_dir, download)


def test_implementations_that_agree_pass(tmp_path):
    sides = [side(tmp_path, "flax", "gpt_oss"), side(tmp_path, "maxtext", "maxtext", 1e-5)]
    report = crosscheck.run_crosscheck("c", sides, GATES)
    assert report["status"] == "PASS", report["failures"]
    assert report["agreement"].startswith("all 3 agree")
    assert len(report["comparisons"]) == 3  # flax vs maxtext, each vs transformers
    assert set(report["inputs"]) == set(IDS)
    assert crosscheck.render_markdown(report).startswith("# PASS: all 3 agree")


def test_the_one_that_disagrees_fails_the_crosscheck_and_is_named(tmp_path):
    sides = [side(tmp_path, "flax", "gpt_oss"), side(tmp_path, "maxtext", "maxtext", 0.5)]
    report = crosscheck.run_crosscheck("c", sides, GATES)
    assert report["status"] == "FAIL"
    assert report["failures"][0] == report["agreement"]
    assert report["agreement"].startswith("maxtext/hf/f32 (maxtext) is the odd one out")
    assert "flax/hf/f32 (gpt_oss) and transformers, which agree" in report["agreement"]
    assert any("max_abs = 0.5, gate requires <= 0.001" in f for f in report["failures"])
    assert crosscheck.render_markdown(report).startswith("# FAIL: maxtext/hf/f32")


def test_the_reference_as_the_odd_one_out_and_no_two_agreeing(tmp_path):
    agreeing = [side(tmp_path, "a", "gpt_oss", 0.3), side(tmp_path, "b", "maxtext", 0.3)]
    sentence = crosscheck.run_crosscheck("c", agreeing, GATES)["agreement"]
    assert sentence.startswith("transformers is the odd one out")
    apart = [side(tmp_path, "c", "gpt_oss", 0.3), side(tmp_path, "d", "maxtext", -0.3)]
    assert crosscheck.run_crosscheck("c", apart, GATES)["agreement"].startswith("no two of")


def test_other_checkpoint_bytes_or_other_ids_are_refused(tmp_path):
    first = side(tmp_path, "a", "gpt_oss")
    other_bytes = side(tmp_path, "b", "maxtext", weights=b"other")
    with pytest.raises(InputError, match=r"b/hf/f32's checkpoint .* the weight files differ"):
        crosscheck.run_crosscheck("c", [first, other_bytes], GATES)
    other_ids = side(tmp_path, "c", "maxtext", ids={n: i + 1 for n, i in IDS.items()})
    with pytest.raises(InputError, match="input 'short_2x4' has other token ids"):
        crosscheck.run_crosscheck("c", [first, other_ids], GATES)


def test_a_parity_folder_without_saved_logits_names_the_rebuild(tmp_path):
    first = side(tmp_path, "a", "gpt_oss")
    old = side(tmp_path, "b", "maxtext")
    (old.parity / paths.LOGITS_FILE).unlink()
    with pytest.raises(InputError, match="predates saved logits: rebuild it"):
        crosscheck.run_crosscheck("c", [first, old], GATES)


def test_saved_logits_keep_the_first_inputs_within_the_budget(monkeypatch):
    monkeypatch.setattr(parity, "SAVED_LOGITS_BYTES", LOGITS["short_2x4"].nbytes * 2 + 1)
    saved = parity.saved_logits(IDS, LOGITS, LOGITS)
    assert set(saved) == {"ids.short_2x4", "jax.short_2x4", "reference.short_2x4"}
    monkeypatch.setattr(parity, "SAVED_LOGITS_BYTES", 1)  # the first input always
    assert "jax.short_2x4" in parity.saved_logits(IDS, LOGITS, LOGITS)


def test_the_cli_writes_the_report_and_the_gate_fails_on_disagreement(tmp_path):
    sides = [side(tmp_path, "flax", "gpt_oss"), side(tmp_path, "maxtext", "maxtext", 0.5)]
    out = tmp_path / "crosscheck" / "c"
    command = [sys.executable, "-m", "onnxforge", "crosscheck", "--name", "c"]
    for s in sides:
        command += ["--side", s.target, s.family, str(s.parity), str(s.download)]
    run = subprocess.run(
        [*command, "--gates", json.dumps(GATES), "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "FAIL crosscheck/c: maxtext/hf/f32 (maxtext) is the odd one out" in run.stdout
    assert json.loads((out / paths.REPORT_JSON).read_text())["status"] == "FAIL"
    assert (out / "manifest.json").exists() and (out / paths.REPORT_MD).exists()
    gate = [sys.executable, "-m", "onnxforge", "gate", "--report", str(out / paths.REPORT_JSON)]
    run = subprocess.run([*gate, "--out", str(tmp_path / "c.passed.json")], capture_output=True)
    assert run.returncode != 0 and not (tmp_path / "c.passed.json").exists()


def config_with(crosschecks: dict) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return {**config, "crosschecks": crosschecks}


def test_config_crosschecks_are_validated_and_built_by_default():
    config = catalog.validate(config_with(catalog_crosschecks()))
    assert "results/crosscheck/tiny-gpt-oss-implementations.passed.json" in (
        catalog.default_targets(config)
    )
    targets = ["results/crosscheck/tiny-gpt-oss-implementations.passed.json"]
    assert catalog.environments_for(config, targets) == ["jax", "maxtext"]
    one_model = {
        "x": {"targets": [{"model": "tiny-gpt-oss", "checkpoint": "hf", "variant": "f32"}] * 2}
    }
    with pytest.raises(InputError, match=r"crosschecks\.x: each target must be another model"):
        catalog.validate(config_with(one_model))
    two_dtypes = {
        "x": {
            "targets": [
                {"model": "tiny-gpt-oss", "checkpoint": "hf", "variant": "f32"},
                {"model": "tiny-gpt_oss", "checkpoint": "hf", "variant": "bf16-cuda"},
            ]
        }
    }
    with pytest.raises(InputError, match="dtypes \\['bfloat16', 'float32'\\]"):
        catalog.validate(config_with(two_dtypes))
    unknown = {"x": {"targets": [{"model": "nope", "checkpoint": "hf", "variant": "f32"}] * 2}}
    with pytest.raises(InputError, match=r"crosschecks\.x\.targets\[0\]: unknown model 'nope'"):
        catalog.validate(config_with(unknown))


def catalog_crosschecks() -> dict:
    """The crosschecks the catalog builds by default (the examples' among them)."""
    config = catalog.with_examples(yaml.safe_load((REPO / "config.yaml").read_text()))
    return config["crosschecks"]
