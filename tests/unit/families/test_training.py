"""Trained tiny checkpoints (``synthetic://...&trained=STEPS``): deterministic bytes for a
seed and a step count, a loss that falls on the passage for a dense and an MoE model, the
MXFP4 layouts written from the trained weights, and a bad step count refused in one line.

Few steps here (the default, 200, takes 10-30 s a model on one thread; the figures are in
``families/training.py``)."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from onnxforge.core.errors import InputError
from onnxforge.core.outputs import hash_tree
from onnxforge.families import training
from onnxforge.families.gpt_oss import FAMILY as GPT_OSS
from onnxforge.families.maxtext import FAMILY as MAXTEXT
from onnxforge.steps.download.sources import download

ONE_LAYER = {"num_hidden_layers": 1}


def test_the_same_seed_and_steps_write_the_same_bytes(tmp_path):
    for name in ("a", "b"):
        GPT_OSS.synthesize(tmp_path / name, seed=3, overrides={**ONE_LAYER, "trained": 3})
    assert hash_tree(tmp_path / "a") == hash_tree(tmp_path / "b")
    GPT_OSS.synthesize(tmp_path / "seed4", seed=4, overrides={**ONE_LAYER, "trained": 3})
    GPT_OSS.synthesize(tmp_path / "steps4", seed=3, overrides={**ONE_LAYER, "trained": 4})
    weights = {
        name: (tmp_path / name / "model.safetensors").read_bytes()
        for name in ("a", "seed4", "steps4")
    }
    assert len(set(weights.values())) == 3
    record = json.loads((tmp_path / "a" / training.RECORD).read_text())
    assert record["steps"] == 3 and record["seed"] == 3 and "seconds" not in record


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_training_brings_the_passage_loss_down(tmp_path, arch):
    """A dense model and an MoE one (its routers train too) learn the passage."""
    MAXTEXT.synthesize(tmp_path / "trained", seed=0, overrides={"arch": arch, "trained": 60})
    record = json.loads((tmp_path / "trained" / training.RECORD).read_text())
    assert record["initial_loss"] > 0.9 * record["uniform_loss"]
    assert record["final_loss"] < 0.5 * record["initial_loss"], record
    assert len(record["loss_curve"]) == 60
    MAXTEXT.synthesize(tmp_path / "untrained", seed=0, overrides={"arch": arch})
    assert not (tmp_path / "untrained" / training.RECORD).exists()
    trained = load_file(str(tmp_path / "trained" / "model.safetensors"))
    untrained = load_file(str(tmp_path / "untrained" / "model.safetensors"))
    changed = {name for name in trained if (trained[name] != untrained[name]).any()}
    assert changed == set(trained)  # every tensor, the routers among them
    if arch == "mixtral":
        assert any(name.endswith("block_sparse_moe.gate.weight") for name in changed)


def test_the_mxfp4_layouts_hold_the_trained_weights(tmp_path):
    settings = {**ONE_LAYER, "original": True}
    GPT_OSS.synthesize(tmp_path / "trained", seed=0, overrides={**settings, "trained": 2})
    GPT_OSS.synthesize(tmp_path / "untrained", seed=0, overrides=settings)
    for layout in ("model.safetensors", "original/model.safetensors"):
        trained = load_file(str(tmp_path / "trained" / layout))
        untrained = load_file(str(tmp_path / "untrained" / layout))
        blocks = [name for name in trained if "blocks" in name]
        assert blocks and all((trained[n] != untrained[n]).any() for n in blocks), layout


@pytest.mark.parametrize(
    "uri",
    [
        "synthetic://maxtext?arch=llama&trained=-1",
        "synthetic://maxtext?arch=llama&trained=1.5",
        "synthetic://gpt_oss?trained=lots",
        "synthetic://gpt_oss?trained=true",
    ],
)
def test_a_bad_step_count_is_refused_in_one_line(tmp_path, uri):
    with pytest.raises(InputError, match=r"trained is .*; expected a whole number") as err:
        download(uri, tmp_path)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_training_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(InputError, match="trained needs the tiny tokenizer"):
        GPT_OSS.synthesize(tmp_path, seed=0, overrides={"vocab_size": 64, "trained": 1})
