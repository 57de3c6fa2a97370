"""Every family refuses non-finite weights at stage, naming the tensor and its first index:
GPT-OSS as it stages each tensor, MaxText (whose converters are not ours) by reading every
tensor once before converting (families.staging.check_checkpoint_values)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from onnxforge.core.errors import InputError
from onnxforge.families import staging


def test_finite_weights_pass_and_a_nan_or_inf_is_named(tmp_path):
    weights = {"model.embed_tokens.weight": np.ones((6, 4), np.float32)}
    save_file(weights, tmp_path / "model.safetensors")
    assert staging.check_checkpoint_values(tmp_path) == 1
    weights["model.embed_tokens.weight"][3, 1] = np.nan
    weights["model.embed_tokens.weight"][5, 0] = np.inf
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(InputError) as refused:
        staging.check_checkpoint_values(tmp_path)
    message = str(refused.value)
    assert "model.embed_tokens.weight" in message and "\n" not in message
    assert "(3, 1)" in message or "[3, 1]" in message, message


def test_a_truncated_file_is_named(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"model\.safetensors"):
        staging.check_checkpoint_values(tmp_path)
