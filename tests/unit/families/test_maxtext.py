"""The maxtext family: its environment stays apart, its overrides follow the checkpoint.

Its tiny checkpoints (one per architecture) go through the DAG in test_registry.py: staged by
MaxText's own converters, run by MaxText's model, exported by jax2onnx and checked against
ONNX Runtime and transformers, then perturbed to prove the gate bites.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from conftest import REPO, snakemake
from onnxforge.core.errors import InputError
from onnxforge.driver.catalog import environments_for
from onnxforge.families.maxtext import FAMILY as MAXTEXT
from onnxforge.families.maxtext.architectures import ARCHITECTURES, maxtext_overrides
from registry import python_for


def release(model: str) -> str:
    return f"results/release/{model}/hf/f32"


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
    assert environments_for(config, [release("tiny-llama")]) == ["jax", "maxtext"]
    assert environments_for(config, ["results/maxtext-survey.md"]) == ["jax", "maxtext"]
    assert environments_for(config, []) == ["jax", "maxtext"]  # the default targets


@pytest.mark.dag
@pytest.mark.maxtext
def test_a_checkpoint_maxtext_cannot_stage_fails_with_a_clear_error(tmp_path):
    """A checkpoint of a type MaxText has no converter for (GPT-2, say) given to the maxtext
    family: stage names the file and the type."""
    import json

    python_for(MAXTEXT)
    checkpoint = tmp_path / "gpt2"
    from onnxforge.families.gpt_oss import FAMILY

    FAMILY.synthesize(checkpoint, seed=0, overrides={})
    config_json = checkpoint / "config.json"
    hf_config = {**json.loads(config_json.read_text()), "model_type": "gpt2"}
    config_json.write_text(json.dumps(hf_config))
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
    assert "config.json: model_type 'gpt2' is not one the maxtext family stages" in log
    assert not (workdir / "results/wrong/hf/stage").exists()


def test_a_kv_export_an_architecture_refuses_is_refused_in_one_line_before_anything_is_traced(
    tmp_path, monkeypatch
):
    """An architecture whose KV decoder cannot be built (``Architecture.kv_refusal``; none of
    the registry's today) is refused naming why, and declares the full-sequence variant only
    (a stage with no checkpoint at all: nothing else is read)."""
    arch = dataclasses.replace(ARCHITECTURES["qwen3"], kv_refusal="its cache is not ours")
    monkeypatch.setitem(ARCHITECTURES, "qwen3", arch)
    config = {**arch.tiny, "model_type": arch.converts[0]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as refused:
        MAXTEXT.load_decoder(tmp_path, np.float32)
    line = str(refused.value)
    assert "no KV-cache decoder for MaxText's qwen3-8b: its cache is not ours" in line
    assert "\n" not in line and "f32" in line
    assert arch.export_variants == ("f32",)
