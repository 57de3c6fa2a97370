"""MXFP4 expert weights (the hub's gpt-oss layout) and layer-truncated stages."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from conftest import snakemake
from onnxforge.core import outputs, params_store
from onnxforge.core.errors import InputError
from onnxforge.core.safetensors_stream import CheckpointReader
from onnxforge.families.gpt_oss import FAMILY, mxfp4


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


def _load(stage_dir, dtype=jnp.float32):
    return FAMILY.load_module(stage_dir, dtype)


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("mxfp4")
    FAMILY.synthesize(out, seed=2, overrides={"mxfp4": True})
    return out


def test_mxfp4_checkpoint_has_the_hub_layout(mxfp4_checkpoint):
    reader = CheckpointReader(mxfp4_checkpoint)
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in reader
    assert "model.layers.0.mlp.experts.gate_up_proj" not in reader
    assert reader.info("model.layers.0.mlp.experts.down_proj_blocks").shape == (8, 64, 1, 16)
    config = json.loads((mxfp4_checkpoint / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"


def test_mxfp4_stage_matches_transformers_dequantizing_itself(mxfp4_checkpoint, tmp_path):
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    model = _load(tmp_path)
    ids = np.random.default_rng(0).integers(0, 256, (2, 40), dtype=np.int32)
    (reference,) = FAMILY.reference_logits(mxfp4_checkpoint, tmp_path, [ids])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), reference, atol=5e-5)


def _files_bytes(directory) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def test_mxfp4_stage_keeps_experts_packed(mxfp4_checkpoint, tmp_path):
    """Blocks and scales are staged as bytes (gate and up rows apart), not decoded: the
    stage's experts take the checkpoint's expert bytes plus Orbax's metadata."""
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    params = tmp_path / "params"
    staged = {p.name for p in params.iterdir()}
    reader = CheckpointReader(mxfp4_checkpoint)
    packed = [n for n in reader if n.endswith(("_blocks", "_scales"))]
    checkpoint_bytes = sum(reader.info(n).nbytes for n in packed)
    staged_bytes, parts = 0, 0
    for layer in range(2):
        for kernel in ("gate_kernel", "up_kernel", "down_kernel"):
            name = f"layers.{layer}.mlp.{kernel}"
            assert name not in staged
            for part in ("blocks", "scales"):
                assert f"{name}.mxfp4_{part}" in staged
                staged_bytes += _files_bytes(params / f"{name}.mxfp4_{part}")
                parts += 1
    # A plain parameter of the same bytes costs what Orbax adds around an array.
    plain = params / "layers.0.attention.sinks"
    overhead = _files_bytes(plain) - 4 * 4  # 4 float32 sinks
    assert staged_bytes <= checkpoint_bytes + parts * (overhead + 256)
    # The decoded kernels would be bfloat16: 4 times the blocks' bytes.
    decoded = sum(int(np.prod(reader.info(n).shape)) * 2 * 2 for n in packed if "_blocks" in n)
    assert staged_bytes < decoded / 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mxfp4_load_decodes_the_kernels_the_stage_used_to_hold(mxfp4_checkpoint, tmp_path, dtype):
    """Loading decodes exactly what staging used to write (bfloat16 ``[e, in, out]`` from the
    reference decoder, gate on even outputs and up on odd), then casts to the dtype."""
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    model = _load(tmp_path, dtype)
    reader = CheckpointReader(mxfp4_checkpoint)

    def decoded(name: str) -> np.ndarray:  # [e, out, in] -> [e, in, out]
        blocks, scales = reader.read(f"{name}_blocks"), reader.read(f"{name}_scales")
        return np.swapaxes(mxfp4.dequantize(blocks, scales), 1, 2)

    for layer in range(2):
        experts = f"model.layers.{layer}.mlp.experts"
        gate_up, down = decoded(f"{experts}.gate_up_proj"), decoded(f"{experts}.down_proj")
        mlp = model.layers[layer].mlp
        for ours, old in (
            (mlp.gate_kernel, gate_up[..., 0::2]),
            (mlp.up_kernel, gate_up[..., 1::2]),
            (mlp.down_kernel, down),
        ):
            value = np.asarray(ours[...])
            assert value.dtype == dtype
            expected = np.ascontiguousarray(old.astype(dtype))
            np.testing.assert_array_equal(value.view(np.uint8), expected.view(np.uint8))


def test_mxfp4_stage_missing_a_part_fails_at_load(mxfp4_checkpoint, tmp_path):
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    shutil.rmtree(tmp_path / "params" / "layers.1.mlp.down_kernel.mxfp4_scales")
    with pytest.raises(InputError, match=r"missing \['layers.1.mlp.down_kernel'\]"):
        _load(tmp_path)


def test_mxfp4_blocks_of_another_dtype_fail_at_stage(mxfp4_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(mxfp4_checkpoint, checkpoint)
    tensors = load_file(str(checkpoint / "model.safetensors"))
    name = "model.layers.1.mlp.experts.down_proj_blocks"
    tensors[name] = tensors[name].view(np.int8)
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(InputError, match=f"{name}. is stored as int8; expected U8"):
        FAMILY.stage(checkpoint, tmp_path / "stage")


def test_perturb_scales_a_plain_tensor_of_an_mxfp4_stage(mxfp4_checkpoint, tmp_path):
    FAMILY.stage(mxfp4_checkpoint, tmp_path)
    before = np.asarray(_load(tmp_path).layers[1].attention.o_kernel[...])
    assert FAMILY.perturb(tmp_path, "attention") == "layers.1.attention.o_kernel"
    after = np.asarray(_load(tmp_path).layers[1].attention.o_kernel[...])
    np.testing.assert_allclose(after, before * 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match="packed part"):
        params_store.rescale(tmp_path / "params" / "layers.1.mlp.up_kernel.mxfp4_blocks", 2.0)


@pytest.mark.dag
def test_mxfp4_checkpoint_builds_through_the_dag(tmp_path):
    """download -> stage (packed) -> export -> parity -> promote for the synthetic MXFP4 tiny
    model: the decode at load feeds both the export and the parity's JAX forward."""
    name = "tiny-gpt-oss-mxfp4"
    source = "synthetic://gpt_oss?seed=0&mxfp4=true"
    overlay = {
        "models": {name: {"family": "gpt_oss", "checkpoints": {"hf": {"source": source}}}},
        "targets": [{"model": name, "checkpoint": "hf", "variant": "f32"}],
    }
    run = snakemake(tmp_path, f"results/release/{name}/hf/f32", config=overlay, timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = tmp_path / "results" / name / "hf"
    assert (results / "stage/params/layers.0.mlp.gate_kernel.mxfp4_blocks").is_dir()
    report = json.loads((results / "parity/f32/report.json").read_text())
    assert report["status"] == "PASS", report["failures"]
    for comparison in ("onnx_vs_jax", "jax_vs_reference"):
        assert report["summary"][comparison]["top1_agreement"] == 1.0, comparison


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
