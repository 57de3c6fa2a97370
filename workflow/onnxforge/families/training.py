"""Trained tiny checkpoints (``synthetic://...&trained=STEPS``): a fixture quantization can be
judged on.

A randomized tiny model predicts nearly uniform tokens, so an int4 or int8 export of it looks
as good as its float twin whatever the rounding does. Trained on the project's passage
(``texts.long_text``, through the checkpoint's own tiny tokenizer) until its loss is low, its
logits are peaked the way a real model's are, and a quantization error shows as lost top-1
agreement and a higher loss.

Deterministic for a seed and a step count: torch seeded, deterministic algorithms, a fixed
thread count, a seeded choice of windows over the token stream, float32 on the CPU. The same
torch build on the same kind of CPU writes the same bytes; another CPU's kernels may round a
sum differently, and training carries that on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxforge.core import progress, texts
from onnxforge.core.errors import InputError

# Enough for the registry's tiny models (width 64, two layers, 256 ids) to learn the passage
# (about 1000 ids): cross-entropy from about ln(256) = 5.5 to about 0.15 in 200 steps, 10 to 30
# seconds on one thread.
DEFAULT_STEPS = 200
LEARNING_RATE = 3e-3
BATCH = 4  # windows per step
# Tokens per window: parity's text input (text_tokens: 512) in one piece, so the positions it
# reaches are trained ones (windows of 128 leave its loss at 1.1 where 512 gives 0.1).
WINDOW = 512
WARMUP = 0.1  # of the steps: the learning rate rises linearly, then falls as a cosine
FINAL_LR = 0.1  # of the peak, at the last step
WEIGHT_DECAY = 0.01  # matrices only: not norm scales or biases
CLIP = 1.0  # gradient norm
THREADS = 1  # a fixed count: a matmul's summation order may follow the thread count
RECORD = "training.json"  # beside the checkpoint: what the training reached


def trained_steps(value: Any, where: str) -> int:
    """The ``trained=`` option as a step count (0: untrained), or InputError in one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(
            f"{where}: trained is {value!r}; expected a whole number of training steps >= 0, "
            f"e.g. trained={DEFAULT_STEPS}"
        )
    return value


def train_synthetic(model: Any, out_dir: Path, steps: int, seed: int, where: str) -> None:
    """A synthesize function's ``trained=STEPS``: train ``model`` on the tokenizer already
    written to ``out_dir``, and write ``training.json`` there (before ``save_pretrained``)."""
    if not texts.has_tokenizer(out_dir):
        raise InputError(
            f"{where}: trained needs the tiny tokenizer, which a vocab_size under "
            f"{texts.MIN_TOKENIZER_VOCAB} does not get"
        )
    write_record(out_dir, train_torch_model(model, out_dir, steps, seed))


def token_stream(tokenizer: Any) -> list[int]:
    """The passage's ids through ``tokenizer`` (a checkpoint folder or a loaded tokenizer)."""
    if isinstance(tokenizer, (str, Path)):
        folder = tokenizer
        tokenizer = texts.load_tokenizer(Path(folder))
        if tokenizer is None:
            raise InputError(
                f"{folder}: no tokenizer to train on (synthetic checkpoints get one when "
                f"vocab_size >= {texts.MIN_TOKENIZER_VOCAB})"
            )
    return list(tokenizer(texts.long_text(), add_special_tokens=False)["input_ids"])


def train_torch_model(
    model: Any,
    tokenizer: Any,
    steps: int,
    seed: int,
    *,
    learning_rate: float = LEARNING_RATE,
    batch: int = BATCH,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Train the causal LM ``model`` in place for ``steps`` AdamW steps on the passage's ids,
    ``batch`` windows of ``window`` tokens a step (seeded starts); leave it in eval mode.

    Returns the figures a report shows: the mean next-token loss over the whole passage (in
    ``window``-token pieces) before and after, the steps, and the seconds taken (the one
    figure that differs between runs)."""
    import torch

    ids = torch.tensor(token_stream(tokenizer), dtype=torch.long)
    window = min(window, len(ids) - 1)
    vocab = model.get_output_embeddings().weight.shape[0]
    if window < 2 or int(ids.max()) >= vocab:
        raise InputError(
            f"cannot train on the passage: {len(ids)} tokens, largest id {int(ids.max())}, "
            f"the model's vocabulary {vocab}"
        )
    started = time.perf_counter()
    with _deterministic(seed):
        model.float()
        initial = passage_loss(model, ids, window)
        optimizer = torch.optim.AdamW(
            _parameter_groups(model), lr=learning_rate, betas=(0.9, 0.95), eps=1e-8
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(ids) - window, (steps, batch), generator=generator)
        offsets = torch.arange(window + 1)
        curve = []
        model.train()
        with progress.phase("train", items=steps, item="steps") as bar:
            for step in range(steps):
                chunk = ids[starts[step, :, None] + offsets]
                logits = model(input_ids=chunk[:, :-1], use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                optimizer.step()
                schedule.step()
                curve.append(round(loss.item(), 4))
                bar.advance(items=1)
        model.eval()
        final = passage_loss(model, ids, window)
    return {
        "steps": steps,
        "seed": seed,
        "tokens": len(ids),
        "batch": batch,
        "window": window,
        "learning_rate": learning_rate,
        "initial_loss": round(initial, 4),
        "final_loss": round(final, 4),
        "uniform_loss": round(math.log(vocab), 4),
        "loss_curve": curve,
        "seconds": round(time.perf_counter() - started, 2),
    }


def passage_loss(model: Any, ids: Any, window: int) -> float:
    """Mean next-token cross-entropy over the passage, cut into consecutive ``window`` pieces
    (the last one shorter), every token but the first of each piece predicted."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            piece = ids[start : start + window + 1][None]
            logits = model(input_ids=piece[:, :-1], use_cache=False).logits
            total += torch.nn.functional.cross_entropy(
                logits[0], piece[0, 1:], reduction="sum"
            ).item()
            count += piece.shape[1] - 1
    model.train(was_training)
    return total / count


def write_record(out_dir: Path, figures: dict[str, Any]) -> None:
    """``training.json`` beside the checkpoint, without the seconds: the same seed and steps
    write the same file."""
    import json

    stable = {k: v for k, v in figures.items() if k != "seconds"}
    (Path(out_dir) / RECORD).write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, round(WARMUP * steps))
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def _parameter_groups(model: Any) -> list[dict[str, Any]]:
    """Weight decay on the matrices, none on norm scales, biases, sinks (one value a head)."""
    decayed, kept = [], []
    for _, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else kept).append(parameter)
    return [
        {"params": decayed, "weight_decay": WEIGHT_DECAY},
        {"params": kept, "weight_decay": 0.0},
    ]


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels, ``THREADS`` threads; the process's settings after."""
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
