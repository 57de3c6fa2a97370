import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from onnxforge.core.errors import InputError
from onnxforge.core.safetensors_stream import CheckpointReader, read_header


def test_reads_every_tensor_like_the_safetensors_library(tiny_checkpoint):
    reader = CheckpointReader(tiny_checkpoint)
    expected = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert set(reader) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(reader.read(name), value)


def test_stored_tensor_reads_rows_on_demand(tiny_checkpoint):
    reader = CheckpointReader(tiny_checkpoint)
    expected = load_file(str(tiny_checkpoint / "model.safetensors"))
    name = max(expected, key=lambda n: (expected[n].ndim, expected[n].size))
    value, stored = expected[name], reader.tensor(name)
    assert stored.shape == value.shape and stored.dtype == value.dtype and value.ndim >= 2
    np.testing.assert_array_equal(np.asarray(stored), value)
    np.testing.assert_array_equal(stored[1:3], value[1:3])
    np.testing.assert_array_equal(stored[-1], value[-1])
    np.testing.assert_array_equal(stored[0, 1:], value[0, 1:])
    np.testing.assert_array_equal(stored[::2], value[::2])
    np.testing.assert_array_equal(stored[5:2], value[5:2])


def test_truncated_file_names_file_and_tensor(tiny_checkpoint, tmp_path):
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"model\.safetensors: tensor .* truncated"):
        CheckpointReader(tmp_path)


def test_cut_inside_header(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header[:10])
    with pytest.raises(InputError, match=r"header length .* exceeds the file"):
        read_header(path)


def test_inconsistent_entry_is_reported(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(InputError, match=r"'a' spans 8 bytes but shape \(3,\)"):
        read_header(path)


def test_missing_tensor_names_it(tiny_checkpoint):
    with pytest.raises(InputError, match=r"'no\.such\.tensor' is missing"):
        CheckpointReader(tiny_checkpoint).read("no.such.tensor")


def test_directory_without_safetensors(tmp_path):
    with pytest.raises(InputError, match=r"no \*\.safetensors files"):
        CheckpointReader(tmp_path)


def _write(path, header, data=b""):
    """A safetensors file with this header (an object, or raw JSON text) and data bytes."""
    raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _f32(begin, end, shape=None):
    return {"dtype": "F32", "shape": shape or [(end - begin) // 4], "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    "header,data,message",
    [
        ('[{"dtype": "F32"}]', b"", r"header is a JSON list; expected a JSON object"),
        ("not json", b"", r"unreadable safetensors header"),
        ({"a": [1, 2]}, b"", r"tensor 'a': its header entry is a JSON list; expected an object"),
        ({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, bytes(4), r"tensor 'a' has no 'shape'"),
        ({"a": {"shape": [1], "data_offsets": [0, 4]}}, bytes(4), r"tensor 'a' has no 'dtype'"),
        ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), r"tensor 'a' has no 'data_offsets'"),
        (
            {"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}},
            bytes(4),
            r"tensor 'a' has unknown dtype 'F99'; expected one of .*'BF16'",
        ),
        (
            {"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}},
            bytes(1),
            r"tensor 'a' has dtype 'F4', which onnxforge does not read",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            bytes(4),
            r"tensor 'a' has shape \[-1\]; expected a list of non-negative integers",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}},
            bytes(4),
            r"tensor 'a' has data_offsets \[-4, 0\]; expected \[begin, end\] with 0 <= begin",
        ),
        (
            {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}},
            bytes(8),
            r"tensor 'a' has data_offsets \[8, 4\]; expected \[begin, end\] with 0 <= begin <= end",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}},
            bytes(8),
            r"tensor 'a' has data_offsets \[0, 4, 8\]",
        ),
        ({"a": _f32(0, 8), "b": _f32(12, 20)}, bytes(20), r"data bytes 8\.\.12 .* belong to no"),
        ({"a": _f32(4, 12)}, bytes(12), r"data bytes 0\.\.4 before tensor 'a' belong to no tensor"),
        ({"a": _f32(0, 8), "b": _f32(4, 12)}, bytes(12), r"tensors 'a' \(data bytes 0\.\.8\) and"),
        ({"a": _f32(0, 8)}, bytes(12), r"4 bytes after the last tensor 'a' belong to no tensor"),
        ({"a": _f32(0, 8)}, bytes(6), r"tensor 'a' ends at byte .* the file is truncated"),
        (
            f'{{"a": {json.dumps(_f32(0, 4))}, "a": {json.dumps(_f32(4, 8))}}}',
            bytes(8),
            r"tensor 'a' is defined twice in the header",
        ),
        ({"__metadata__": ["x"], "a": _f32(0, 4)}, bytes(4), r"__metadata__ is a JSON list"),
    ],
)
def test_header_is_checked_against_the_spec(tmp_path, header, data, message):
    path = _write(tmp_path / "model.safetensors", header, data)
    with pytest.raises(InputError, match=message) as err:
        read_header(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert "download it again" in text or "Download it again" in text


def test_tensors_need_not_be_listed_in_offset_order(tmp_path):
    header = {"b": _f32(8, 12), "empty": _f32(8, 8, shape=[0]), "a": _f32(0, 8)}
    path = _write(tmp_path / "model.safetensors", header, np.arange(3, dtype="<f4").tobytes())
    tensors = read_header(path)
    assert tensors["a"].offset == tensors["b"].offset - 8 and tensors["empty"].nbytes == 0
    reader = CheckpointReader(tmp_path)
    np.testing.assert_array_equal(reader.read("b"), [2.0])


def test_a_tensor_in_two_shards_names_both_files(tmp_path):
    _write(tmp_path / "model-00001-of-00002.safetensors", {"a": _f32(0, 4)}, bytes(4))
    _write(tmp_path / "model-00002-of-00002.safetensors", {"a": _f32(0, 4)}, bytes(4))
    with pytest.raises(
        InputError,
        match=r"tensor 'a' is defined in both model-00001-of-00002\."
        r"safetensors and model-00002-of-00002\.safetensors",
    ) as err:
        CheckpointReader(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: ")


def _index(directory, weight_map):
    text = json.dumps({"metadata": {}, "weight_map": weight_map})
    (directory / "model.safetensors.index.json").write_text(text)


def test_a_shard_named_by_the_index_must_be_there(tmp_path):
    _write(tmp_path / "model-00001-of-00002.safetensors", {"a": _f32(0, 4)}, bytes(4))
    _index(
        tmp_path, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    )
    with pytest.raises(
        InputError,
        match=r"index\.json names model-00002-of-00002\.safetensors "
        r"\(for tensor 'b'\), which is missing",
    ):
        CheckpointReader(tmp_path)


def test_a_tensor_where_the_index_does_not_put_it(tmp_path):
    _write(tmp_path / "one.safetensors", {"a": _f32(0, 4)}, bytes(4))
    _write(tmp_path / "two.safetensors", {"b": _f32(0, 4)}, bytes(4))
    _index(tmp_path, {"a": "two.safetensors", "b": "two.safetensors"})
    with pytest.raises(
        InputError,
        match=r"tensor 'a' is in one\.safetensors but model\.safetensors"
        r"\.index\.json puts it in two\.safetensors",
    ):
        CheckpointReader(tmp_path)
    _index(tmp_path, {"a": "one.safetensors", "b": "two.safetensors"})
    assert set(CheckpointReader(tmp_path)) == {"a", "b"}


def test_nonfinite_weights_are_refused_where_they_are_read(tmp_path):
    from safetensors.numpy import save_file

    weights = np.arange(24, dtype=np.float32).reshape(6, 4)
    weights[4, 2] = np.nan
    save_file({"w": weights, "ids": np.arange(3)}, str(tmp_path / "model.safetensors"))
    reader = CheckpointReader(tmp_path)
    np.testing.assert_array_equal(reader.read("ids"), np.arange(3))
    np.testing.assert_array_equal(reader.tensor("w")[:4], weights[:4])  # rows without it
    message = rf"^{tmp_path}/model\.safetensors: tensor 'w': 1 of 8 values are not finite "
    with pytest.raises(InputError, match=message + r"\(first: nan at \[4, 2\]\)"):
        reader.tensor("w")[4:]
    with pytest.raises(InputError, match=r"1 of 24 values .* at \[4, 2\]"):
        reader.read("w")
    with pytest.raises(InputError, match=r"1 of 4 values .* at \[4, 2\]"):
        reader.tensor("w")[4]
    assert np.isnan(CheckpointReader(tmp_path, finite=False).read("w")[4, 2])
