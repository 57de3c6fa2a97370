"""Real text for parity: the shipped passage through a tiny real tokenizer, the same files
every time, ids within the tiny vocabulary; none for a vocabulary too small to hold it."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.core import texts
from onnxforge.core.errors import InputError


def test_the_tiny_tokenizer_is_deterministic_and_fits_the_vocabulary(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        texts.write_tiny_tokenizer(folder, 256)
    files = sorted(p.name for p in first.iterdir())
    assert "tokenizer.json" in files
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    tokenizer = texts.load_tokenizer(first)
    inputs = texts.text_inputs(tokenizer, 256, 512, np.int32)
    long_name, short_name = inputs
    assert long_name.startswith("text_long_1x") and inputs[long_name].shape[1] >= 300
    assert texts.decode(tokenizer, inputs[short_name][0].tolist()) == texts.SHORT_PROMPT
    with pytest.raises(InputError, match="vocab_size is 100"):
        texts.text_inputs(tokenizer, 100, 512, np.int32)


def test_a_vocabulary_too_small_gets_no_tokenizer(tmp_path):
    texts.write_tiny_tokenizer(tmp_path, texts.MIN_TOKENIZER_VOCAB - 1)
    assert not texts.has_tokenizer(tmp_path) and texts.load_tokenizer(tmp_path) is None
