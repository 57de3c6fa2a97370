"""The ONNX graph every export has, and every consumer of it expects: one definition.

``input_ids [batch, sequence]`` (int32) -> ``logits [batch, sequence, vocab]``; batch and
sequence stay symbolic, so one file serves any prompt length.
"""

from __future__ import annotations

import numpy as np

INPUT_IDS = "input_ids"
LOGITS = "logits"
INPUT_NAMES = (INPUT_IDS,)
OUTPUT_NAMES = (LOGITS,)
INPUT_AXES = ("batch", "sequence")
INPUT_DTYPE = np.int32


def feeds(token_ids: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime's inputs for a batch of token ids."""
    return {INPUT_IDS: np.asarray(token_ids, INPUT_DTYPE)}
