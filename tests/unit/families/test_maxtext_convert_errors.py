"""MaxText's converter looks tensors up by name: one the checkpoint lacks is called missing,
one it has no place for is named as unknown to it (each one line)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from onnxforge.families.maxtext.convert import _converter_key_error


def test_a_missing_tensor_is_called_missing_and_a_foreign_one_unknown(tmp_path):
    save_file(
        {"model.embed_tokens.weight": np.zeros((4, 2), np.float32)}, tmp_path / "m.safetensors"
    )
    missing = str(_converter_key_error(tmp_path, KeyError("model.norm.weight")))
    assert "tensor 'model.norm.weight' is missing" in missing and "\n" not in missing
    foreign = str(_converter_key_error(tmp_path, KeyError("model.embed_tokens.weight")))
    assert "does not know tensor 'model.embed_tokens.weight'" in foreign
