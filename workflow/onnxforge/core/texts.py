"""Real text for parity: a fixed long English passage (``data/long.txt``, written for this
project) and a short prompt, through the checkpoint's own tokenizer.

Seeded random ids miss what only real text exercises (the RoPE and masking paths at the
positions a real prompt reaches, the routing real tokens get); MaxText's logit checker uses a
~500-token real prompt for the same reason. Checkpoints without a tokenizer keep the seeded
ids alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core.errors import InputError

LONG_TEXT = Path(__file__).with_name("data") / "long.txt"
SHORT_PROMPT = "The old keeper opened the green book and wrote"
# Any of these in a download means it ships a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def long_text() -> str:
    return LONG_TEXT.read_text(encoding="utf-8")


def has_tokenizer(checkpoint_dir: Path) -> bool:
    return any((Path(checkpoint_dir) / name).exists() for name in TOKENIZER_FILES)


def load_tokenizer(checkpoint_dir: Path):
    """The checkpoint's tokenizer (transformers), or None when it ships none."""
    if not has_tokenizer(checkpoint_dir):
        return None
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(checkpoint_dir))
    except (OSError, ValueError) as err:
        raise InputError(
            f"{checkpoint_dir}: has tokenizer files but transformers cannot load them ({err}); "
            "fix or remove them"
        ) from err


def text_inputs(
    tokenizer: Any, vocab_size: int, max_tokens: int, dtype: Any
) -> dict[str, np.ndarray]:
    """``text_long_1xN`` (the passage, cut to ``max_tokens``) and ``text_short_1xM`` (the
    prompt), as ``[1, tokens]`` ids; ids the model's vocabulary lacks are an error."""
    inputs = {}
    for kind, text in (("long", long_text()), ("short", SHORT_PROMPT)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if not ids:
            raise InputError(f"the tokenizer gives no tokens for the {kind} parity text")
        if max(ids) >= vocab_size:
            raise InputError(
                f"the checkpoint's tokenizer gives id {max(ids)}; the model's vocab_size is "
                f"{vocab_size}. Does the tokenizer belong to this checkpoint?"
            )
        inputs[f"text_{kind}_1x{len(ids)}"] = np.asarray([ids], dtype)
    return inputs


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids) if tokenizer is not None else ""


MIN_TOKENIZER_VOCAB = 128  # the passage's characters and some merges; fewer ids get none


def write_tiny_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A small real BPE tokenizer for synthetic checkpoints, trained on the shipped passage
    (deterministic: the same files every time), at most ``vocab_size`` ids (and 256), saved
    the way the hub ships one (transformers' ``save_pretrained``: tokenizer.json and its
    config). A vocabulary under ``MIN_TOKENIZER_VOCAB`` gets none: seeded ids only."""
    if vocab_size < MIN_TOKENIZER_VOCAB:
        return
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    # Byte-level (GPT-2's form): what ONNX Runtime GenAI's tokenizer reads as well.
    tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 256),
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
    )
    corpus = [*long_text().splitlines(), SHORT_PROMPT]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    wrapped.save_pretrained(str(out_dir))
