"""MXFP4 expert weights (the hub's gpt-oss layout) and layer-truncated stages."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from onnxforge import outputs, params_store
from onnxforge.errors import InputError
from onnxforge.families.gpt_oss import FAMILY, mxfp4
from onnxforge.safetensors_stream import CheckpointReader


def test_dequantize_matches_transformers_on_the_same_bytes():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 8, 4, 16), dtype=np.uint8)  # [e, out, groups, 16]
    scales = rng.integers(118, 132, (3, 8, 4), dtype=np.uint8)
    theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales))
    ours = mxfp4.dequantize(blocks, scales)  # [e, out, in]; transformers returns [e, in, out]
    assert ours.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        np.swapaxes(ours.astype(np.float32), 1, 2), theirs.float().numpy()
    )


def test_table_decode_gives_the_same_bits_as_dequantize():
    """Every byte under every scale, including those past bfloat16's range (inf) and below
    its normals, in the transposed layout staging writes."""
    rng = np.random.default_rng(2)
    rows, groups = 256, 3
    blocks = rng.integers(0, 256, (rows, groups, 16), dtype=np.uint8)
    blocks[:, 0] = np.arange(256, dtype=np.uint8)[:, None]
    scales = np.arange(rows * groups, dtype=np.int64).reshape(rows, groups).astype(np.uint8)
    out = np.empty((groups * 32, rows), dtype=ml_dtypes.bfloat16)
    mxfp4.dequantize_transposed(blocks, scales, out)
    expected = mxfp4.dequantize(blocks, scales).T
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))
    with pytest.raises(ValueError, match="do not match"):
        mxfp4.dequantize_transposed(blocks, scales[:, :2], out)


def test_quantize_round_trip():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 5, 64)).astype(np.float32)
    blocks, scales = mxfp4.quantize(values)
    assert blocks.shape == (2, 5, 2, 16) and scales.shape == (2, 5, 2)
    restored = mxfp4.dequantize(blocks, scales, dtype=np.float32)
    # FP4 keeps about one significant bit: error below a quarter of each block's peak.
    peak = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True)
    assert np.all(np.abs(restored - values).reshape(-1, 32) <= peak / 4 + 1e-7)
    exact = mxfp4.dequantize(*mxfp4.quantize(restored), dtype=np.float32)
    np.testing.assert_array_equal(exact, restored)  # representable values survive exactly


def test_mismatched_blocks_and_scales():
    with pytest.raises(ValueError, match="do not match"):
        mxfp4.dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))


def _load(stage_dir):
    config = FAMILY.read_config(stage_dir)
    abstract = nnx.eval_shape(lambda: FAMILY.build(config, jnp.float32))
    return params_store.load_into(abstract, stage_dir / "params", jnp.float32)


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("mxfp4")
    FAMILY.synthesize(out, seed=2, overrides={"mxfp4": True})
    return out


def test_mxfp4_checkpoint_has_the_hub_layout(mxfp4_checkpoint):
    reader = CheckpointReader(mxfp4_checkpoint)
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in reader
    assert "model.layers.0.mlp.experts.gate_up_proj" not in reader
    assert reader.info("model.layers.0.mlp.experts.down_proj_blocks").shape == (4, 64, 1, 16)
    config = json.loads((mxfp4_checkpoint / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"


def test_mxfp4_stage_matches_transformers_dequantizing_itself(mxfp4_checkpoint, tmp_path):
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    model = _load(tmp_path)
    ids = np.random.default_rng(0).integers(0, 256, (2, 40), dtype=np.int32)
    (reference,) = FAMILY.reference_logits(mxfp4_checkpoint, tmp_path, [ids])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), reference, atol=5e-5)


def test_truncated_stage_keeps_the_first_layers(tiny_checkpoint, tmp_path):
    FAMILY.stage(tiny_checkpoint, tmp_path, layers=1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["layer_types"] == ["sliding_attention"]
    model = _load(tmp_path)
    assert len(model.layers) == 1
    ids = np.random.default_rng(1).integers(0, 256, (1, 30), dtype=np.int32)
    (reference,) = FAMILY.reference_logits(tiny_checkpoint, tmp_path, [ids])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), reference, atol=2e-5)


def test_truncating_to_more_layers_than_exist(tiny_checkpoint, tmp_path):
    with pytest.raises(InputError, match="cannot keep 5 layers; num_hidden_layers is 2"):
        FAMILY.stage(tiny_checkpoint, tmp_path, layers=5)


def test_openai_original_layout_stages_to_the_same_parameters(tmp_path):
    """The hub ships both layouts of one model; both must stage to identical parameters, and
    the original/ stage must match transformers on the root (Hugging Face) files."""
    FAMILY.synthesize(tmp_path / "repo", seed=4, overrides={"original": True})
    FAMILY.stage(tmp_path / "repo" / "original", tmp_path / "from_original")
    FAMILY.stage(tmp_path / "repo", tmp_path / "from_hf")
    original, hf = _load(tmp_path / "from_original"), _load(tmp_path / "from_hf")
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(original)), nnx.to_flat_state(nnx.state(hf)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))
    ids = np.random.default_rng(2).integers(0, 256, (1, 40), dtype=np.int32)
    (reference,) = FAMILY.reference_logits(tmp_path / "repo", tmp_path / "from_original", [ids])
    np.testing.assert_allclose(np.asarray(original(jnp.asarray(ids))), reference, atol=5e-5)


def test_stage_returns_the_hashes_of_what_it_wrote(tiny_checkpoint, tmp_path):
    staged = FAMILY.stage(tiny_checkpoint, tmp_path)
    on_disk = outputs.hash_tree(tmp_path)
    assert staged.files
    assert staged.files == {k: v for k, v in on_disk.items() if k.startswith("params/")}
    # ... and the digest of every parameter's values, as read back from the files
    params = tmp_path / "params"
    assert set(staged.values) == {p.name for p in params.iterdir()}
    with ocp.PyTreeCheckpointer() as checkpointer:
        for name, digest in staged.values.items():
            value = checkpointer.restore((params / name).absolute())["value"]
            assert outputs.value_digest(value) == digest, name


def test_two_stages_of_one_checkpoint_are_the_same_bytes(tiny_checkpoint, tmp_path):
    """No OCDBT (random file names) and no save times in Orbax's metadata."""
    first = FAMILY.stage(tiny_checkpoint, tmp_path / "a")
    second = FAMILY.stage(tiny_checkpoint, tmp_path / "b")
    assert outputs.hash_tree(tmp_path / "a") == outputs.hash_tree(tmp_path / "b")
    assert first == second
