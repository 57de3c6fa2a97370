"""The real Snakemake DAG on the tiny model: it passes, the gate bites, bad input fails cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import snakemake
from onnxforge.core import outputs, paths
from onnxforge.families.gpt_oss import FAMILY, hf_checkpoint

pytestmark = pytest.mark.dag
TARGET = Path("results/tiny-gpt-oss/hf")
RELEASE = "results/release/tiny-gpt-oss/hf/f32"  # the maxtext targets: test_maxtext.py


@pytest.fixture(scope="module")
def built(registry_build) -> Path:
    """The shared DAG run over the registry's examples (tiny-gpt-oss among them)."""
    return registry_build


def test_default_target_passes_with_reports_and_manifests(built):
    report = json.loads((built / TARGET / "parity/f32/report.json").read_text())
    assert report["status"] == "PASS"
    assert report["summary"]["onnx_vs_jax"]["max_abs"] < 1e-3
    assert report["summary"]["jax_vs_reference"]["top1_agreement"] == 1.0
    assert report["inputs"]["long_1x256"] == [1, 256]
    assert report["decode"]["agree"]
    assert (built / TARGET / "parity/f32/report.md").read_text().startswith("# PASS: ")
    assert json.loads((built / TARGET / "parity/f32.passed.json").read_text())["status"] == "PASS"
    for step in ("download", "stage", "export/f32", "parity/f32"):
        manifest = json.loads((built / TARGET / step / "manifest.json").read_text())
        assert manifest["outputs"] and manifest["environment"]["packages"]["jax2onnx"]
    stage_inputs = json.loads((built / TARGET / "stage/manifest.json").read_text())["inputs"]
    download_outputs = json.loads((built / TARGET / "download/manifest.json").read_text())[
        "outputs"
    ]
    assert stage_inputs["checkpoint"]["model.safetensors"] == download_outputs["model.safetensors"]
    assert not list(built.glob("results/**/*.tmp-*"))


def test_release_holds_only_what_passed_with_full_provenance(built):
    release = built / "results/release/tiny-gpt-oss/hf/f32"
    names = {p.name for p in release.iterdir() if not p.name.startswith(".snakemake")}
    assert names == {*paths.RELEASED, "manifest.json"}
    manifest = json.loads((release / "manifest.json").read_text())
    download = json.loads((built / TARGET / "download/manifest.json").read_text())
    assert manifest["inputs"]["checkpoint"] == download["outputs"]
    assert manifest["revision"] == "seed=0"
    assert (
        manifest["locked_packages"]["jax2onnx"] == manifest["environment"]["packages"]["jax2onnx"]
    )
    assert set(manifest["volatile"]["steps"]) == {"download", "stage", "export", "parity"}
    assert manifest["volatile"]["command"].startswith("snakemake")
    assert (
        manifest["outputs"]["model.onnx"]
        == json.loads((built / TARGET / "export/f32/manifest.json").read_text())["outputs"][
            "model.onnx"
        ]
    )


def test_second_run_has_nothing_to_do(built):
    run = snakemake(built, "--dry-run", RELEASE)
    assert run.returncode == 0
    assert "Nothing to be done" in run.stdout + run.stderr


def test_a_broken_weight_mapping_fails_the_gate(built, tmp_path, monkeypatch):
    """Stage again with v_proj not transposed (square: 2 kv heads of 32 over hidden 64, so
    every shape still fits)."""
    workdir = tmp_path / "broken"
    shutil.copytree(built, workdir, symlinks=True)
    original = hf_checkpoint.tensor_rules

    def broken_rules(cfg, quantized=False):
        rules = original(cfg, quantized)
        return [
            hf_checkpoint.TensorRule(r.sources, {p: hf_checkpoint.same for p in r.targets})
            if r.sources[0].endswith("v_proj.weight")
            else r
            for r in rules
        ]

    monkeypatch.setattr(hf_checkpoint, "tensor_rules", broken_rules)
    with outputs.atomic_directory(workdir / TARGET / "stage") as tmp:
        FAMILY.stage(workdir / TARGET / "download", tmp)

    run = snakemake(workdir, RELEASE)
    assert run.returncode != 0
    assert "parity gate failed" in run.stdout + run.stderr
    report = json.loads((workdir / TARGET / "parity/f32/report.json").read_text())
    assert report["status"] == "FAIL"
    assert any(f.startswith("jax_vs_reference") for f in report["failures"])
    assert report["summary"]["onnx_vs_jax"]["max_abs"] < 1e-3  # export faithful to bad weights
    assert not (workdir / TARGET / "parity/f32.passed.json").exists()
    assert not (workdir / "results/release/tiny-gpt-oss/hf/f32").exists()


def test_truncated_checkpoint_fails_at_stage_with_a_clear_log(built, tmp_path):
    checkpoint = tmp_path / "truncated"
    shutil.copytree(built / TARGET / "download", checkpoint)
    data = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(data[:1000])
    config = {
        "models": {
            "cut": {"family": "gpt_oss", "checkpoints": {"hf": {"source": f"file://{checkpoint}"}}}
        },
        "targets": [{"model": "cut", "checkpoint": "hf", "variant": "f32"}],
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = snakemake(workdir, config=config)
    assert run.returncode != 0
    log = (workdir / "results/cut/hf/logs/stage.log").read_text()
    assert "model.safetensors" in log and "truncated" in log
    assert (workdir / "results/cut/hf/download/manifest.json").exists()
    assert not (workdir / "results/cut/hf/stage").exists()
    assert not list(workdir.glob("results/cut/hf/stage.tmp-*"))


def test_unknown_model_target(tmp_path):
    run = snakemake(tmp_path, "results/gpt-9/hf/parity/f32.passed.json")
    assert run.returncode != 0
    assert "unknown model 'gpt-9'" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


def test_schema_violation_names_the_key(tmp_path):
    run = snakemake(tmp_path, "--dry-run", config={"variants": {"f32": {"dtype": "float8"}}})
    assert run.returncode != 0
    assert "variants.f32.dtype: 'float8' is not one of" in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("results/tiny-gpt-oss/hf/parity/f99.passed.json", "unknown variant 'f99'"),
        ("results/release/tiny-gpt-oss/zz/f32", "model 'tiny-gpt-oss' has no checkpoint 'zz'"),
    ],
)
def test_a_target_the_catalog_lacks_is_one_line_without_a_traceback(tmp_path, target, message):
    run = snakemake(tmp_path, "--dry-run", target)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{target}: {message}" in output
    assert "Traceback" not in output and "InputFunctionException" not in output
