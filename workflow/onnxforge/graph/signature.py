"""The ONNX graphs every export has, and every consumer of them expects: one definition.

Full-sequence export: ``input_ids [batch, sequence]`` (int32) -> ``logits [batch, sequence,
vocab]``; batch and sequence stay symbolic, so one file serves any prompt length.

KV-cache decoder (variant ``decoder: kv``), the I/O contract of Optimum's ORTModelForCausalLM
and ONNX Runtime GenAI: ``input_ids [batch, sequence]``, ``attention_mask [batch,
past_sequence + sequence]``, ``position_ids [batch, sequence]`` (all int64) and per layer
``past_key_values.{i}.key|value [batch, kv_heads, past_sequence, head_dim]`` -> ``logits
[batch, sequence, vocab]`` and ``present.{i}.key|value [batch, kv_heads, past_sequence +
sequence, head_dim]``. One graph serves prefill (past_sequence 0) and decode; the cache grows
by what each step appends. (GenAI may instead pass one fixed-size buffer as both past and
present where GroupQueryAttention appends in place: ``genai``.)
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


# The KV-cache decoder.
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
KV_INPUT_DTYPE = np.int64
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
# Symbolic axes; the mask's is an expression of the other two, as Optimum names it.
BATCH, SEQUENCE, PAST = "batch", "sequence", "past_sequence"
TOTAL = f"{PAST} + {SEQUENCE}"


def kv_input_names(num_layers: int) -> list[str]:
    names = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS]
    for layer in range(num_layers):
        names += [PAST_KEY.format(layer), PAST_VALUE.format(layer)]
    return names


def kv_output_names(num_layers: int) -> list[str]:
    names = [LOGITS]
    for layer in range(num_layers):
        names += [PRESENT_KEY.format(layer), PRESENT_VALUE.format(layer)]
    return names


def kv_feeds(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray,
    past: list[tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """ONNX Runtime's inputs for one step of the KV-cache decoder."""
    feed = {
        INPUT_IDS: np.asarray(input_ids, KV_INPUT_DTYPE),
        ATTENTION_MASK: np.asarray(attention_mask, KV_INPUT_DTYPE),
        POSITION_IDS: np.asarray(position_ids, KV_INPUT_DTYPE),
    }
    for layer, (key, value) in enumerate(past):
        feed[PAST_KEY.format(layer)] = key
        feed[PAST_VALUE.format(layer)] = value
    return feed


def empty_past(
    batch: int, num_layers: int, kv_heads: int, head_dim: int, dtype
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cache before prefill: past_sequence 0."""
    shape = (batch, kv_heads, 0, head_dim)
    return [(np.zeros(shape, dtype), np.zeros(shape, dtype)) for _ in range(num_layers)]


def position_ids_for(attention_mask: np.ndarray, sequence: int) -> np.ndarray:
    """The positions of the last ``sequence`` tokens: how many real tokens precede each (as
    transformers and GenAI number a left-padded row); padding gets 0 (its keys are masked)."""
    mask = np.asarray(attention_mask, np.int64)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    return positions[:, -sequence:]
