import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from onnxforge.errors import InputError
from onnxforge.safetensors_stream import CheckpointReader, read_header


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
