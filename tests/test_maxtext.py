"""MaxText models through the real DAG, in the maxtext environment.

Four tiny checkpoints written by transformers (Llama, Mistral, Mixtral, Gemma) are staged by
MaxText's own converters, run by MaxText's model, exported by jax2onnx and checked against
ONNX Runtime and transformers. A perturbed converted tensor must fail the gate.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from onnxforge.catalog import environments_for
from onnxforge.families.maxtext.architectures import ARCHITECTURES, maxtext_overrides
from test_dag import snakemake

MAXTEXT_PYTHON = REPO / ".venv-maxtext/bin/python"
MODELS = ("tiny-llama2", "tiny-mistral", "tiny-mixtral", "tiny-gemma")


def release(model: str) -> str:
    return f"results/release/{model}/hf/f32"


def maxtext_python() -> Path:
    if not MAXTEXT_PYTHON.exists():
        pytest.fail(f"{MAXTEXT_PYTHON} is missing: run `make env-maxtext`", pytrace=False)
    return MAXTEXT_PYTHON


def test_the_jax_environment_has_no_maxtext():
    assert importlib.util.find_spec("maxtext") is None
    assert importlib.util.find_spec("tensorflow") is None
    jax_lock = (REPO / "envs/jax.lock.txt").read_text()
    assert "\nmaxtext==" not in jax_lock and "\ntensorflow" not in jax_lock
    assert "\nmaxtext==0.2.5" in (REPO / "envs/maxtext.lock.txt").read_text()


def test_overrides_follow_the_checkpoint_config():
    tiny = {**ARCHITECTURES["mixtral"].tiny, "model_type": "mixtral", "rope_theta": 1e6}
    overrides = maxtext_overrides(tiny)
    assert overrides["base_num_decoder_layers"] == 2
    assert overrides["base_num_kv_heads"] == 2 and overrides["head_dim"] == 16
    assert overrides["num_experts"] == 4 and overrides["base_moe_mlp_dim"] == 64
    assert overrides["rope_max_timescale"] == 1e6


def test_make_run_builds_the_maxtext_environment_only_when_targets_need_it():
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert environments_for(config, [release("tiny-gpt-oss")]) == ["jax"]
    assert environments_for(config, [release("tiny-llama2")]) == ["jax", "maxtext"]
    assert environments_for(config, ["results/maxtext-survey.md"]) == ["jax", "maxtext"]
    assert environments_for(config, []) == ["jax", "maxtext"]  # the default targets


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    maxtext_python()
    workdir = tmp_path_factory.mktemp("maxtext")
    run = snakemake(workdir, *(release(m) for m in MODELS), timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@pytest.mark.dag
@pytest.mark.maxtext
@pytest.mark.parametrize("model", MODELS)
def test_each_family_passes_its_gate(built, model):
    root = built / "results" / model / "hf"
    report = json.loads((root / "parity/f32/report.json").read_text())
    assert report["status"] == "PASS", report["failures"]
    for comparison in ("onnx_vs_jax", "jax_vs_reference"):
        summary = report["summary"][comparison]
        assert summary["max_abs"] < 1e-3 and summary["top1_agreement"] == 1.0
    assert report["inputs"]["long_1x256"] == [1, 256]
    assert report["decode"]["agree"] and len(report["decode"]["onnx"]) >= 8
    stage = json.loads((root / "stage/manifest.json").read_text())
    assert stage["environment"]["lock"] == "maxtext.lock.txt"
    assert stage["environment"]["packages"]["maxtext"] == "0.2.5"
    assert (root / "stage/checkpoint/0/items").is_dir()  # MaxText's own checkpoint layout
    staged = json.loads((root / "stage/maxtext.json").read_text())
    assert (
        staged["model_name"]
        == {
            "tiny-llama2": "llama2-7b",
            "tiny-mistral": "mistral-7b",
            "tiny-mixtral": "mixtral-8x7b",
            "tiny-gemma": "gemma-2b",
        }[model]
    )
    released = {p.name for p in (built / release(model)).iterdir()}
    assert {"model.onnx", "model.onnx.data", "report.md", "manifest.json"} <= released


PERTURB = """
import sys
from pathlib import Path
from onnxforge.families.maxtext import convert
stage = Path(sys.argv[1])
weights = convert.load(stage / "checkpoint")
kernel = weights["decoder"]["layers_1"]["mlp"]["wo"]["kernel"]
kernel[:] = kernel * 1.5  # one converted tensor, scaled: every shape still fits
import shutil
shutil.rmtree(stage / "checkpoint")
convert.save(weights, stage / "checkpoint")
"""


@pytest.mark.dag
@pytest.mark.maxtext
def test_a_perturbed_converted_tensor_fails_the_gate(built, tmp_path):
    workdir = tmp_path / "perturbed"
    shutil.copytree(built, workdir, symlinks=True)
    root = workdir / "results/tiny-llama2/hf"
    perturb = subprocess.run(
        [str(maxtext_python()), "-c", PERTURB, str(root / "stage")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert perturb.returncode == 0, perturb.stderr[-2000:]
    # Snakemake dates a directory output by its .snakemake_timestamp: the stage is now newer.
    (root / "stage/.snakemake_timestamp").touch()
    run = snakemake(workdir, release("tiny-llama2"))
    assert run.returncode != 0
    assert "parity gate failed" in run.stdout + run.stderr
    report = json.loads((root / "parity/f32/report.json").read_text())
    assert report["status"] == "FAIL"
    assert any(f.startswith("jax_vs_reference") for f in report["failures"])
    assert report["summary"]["onnx_vs_jax"]["max_abs"] < 1e-3  # ONNX follows the bad weights
    assert not (workdir / "results/tiny-llama2/hf/parity/f32.passed.json").exists()
    assert not (workdir / release("tiny-llama2")).exists()


@pytest.mark.dag
@pytest.mark.maxtext
def test_a_checkpoint_maxtext_cannot_stage_fails_with_a_clear_error(tmp_path):
    """A GPT-OSS checkpoint given to the maxtext family: stage names the file and the type."""
    maxtext_python()
    checkpoint = tmp_path / "gpt-oss"
    from onnxforge.families.gpt_oss import FAMILY

    FAMILY.synthesize(checkpoint, seed=0, overrides={})
    config = {
        "models": {
            "wrong": {
                "family": "maxtext",
                "checkpoints": {"hf": {"source": f"file://{checkpoint}"}},
            }
        },
        "targets": [{"model": "wrong", "checkpoint": "hf", "variant": "f32"}],
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = snakemake(workdir, config=config)
    assert run.returncode != 0
    log = (workdir / "results/wrong/hf/logs/stage.log").read_text()
    assert "config.json: model_type 'gpt_oss' is not one the maxtext family stages" in log
    assert not (workdir / "results/wrong/hf/stage").exists()
