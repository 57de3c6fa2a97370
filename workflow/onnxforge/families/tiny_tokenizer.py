"""A tiny deterministic tokenizer for synthetic checkpoints: byte-level BPE with no merges,
token id = byte value (GPT-2's byte-to-character map), so any text encodes within 256 ids.

ONNX Runtime GenAI needs a checkpoint's tokenizer files beside a KV export; synthetic
checkpoints have no real one, and this is the smallest tokenizer both transformers and GenAI
(onnxruntime-extensions) read. Written by the ``tokenizers`` library, byte-identical per call.
"""

from __future__ import annotations

import json
from pathlib import Path

BYTES = 256


def byte_characters() -> list[str]:
    """GPT-2's printable character for each byte value (the ByteLevel pre-tokenizer's map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    characters = {b: chr(b) for b in printable}
    extra = 0
    for b in range(BYTES):
        if b not in characters:
            characters[b] = chr(BYTES + extra)
            extra += 1
    return [characters[b] for b in range(BYTES)]


def write(out_dir: Path, vocab_size: int) -> None:
    """tokenizer.json and tokenizer_config.json into ``out_dir`` (the model needs
    ``vocab_size >= 256``; ids past 255 are never produced)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if vocab_size < BYTES:
        raise ValueError(f"the byte tokenizer needs vocab_size >= {BYTES}, got {vocab_size}")
    vocab = {character: byte for byte, character in enumerate(byte_characters())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(Path(out_dir) / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}
    (Path(out_dir) / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
