"""Generation gates for KV-cache exports: ONNX Runtime generating token by token, against
transformers' own ``generate`` and against itself without a cache.

Each is a gate that fails the target (parity runs them for variants with ``decoder: kv``):

1. ``prefill_vs_reference``: the KV model's prefill (past length 0) logits on the parity
   inputs vs transformers' forward.
2. ``decode_vs_reference``: a greedy decode of ``generate_tokens`` (more where the model has a
   sliding window: the decode runs past it) with the KV model in ONNX Runtime vs
   transformers' ``generate(do_sample=False)`` on the same prompt: identical tokens, and every
   step's logits within the dtype's gates.
3. ``cache_consistency``: each decode step's logits vs one prefill of the whole sequence
   (prompt and generated tokens, no cache) by the same graph.
4. ``left_padded_batch``: three prompts of different lengths, left-padded into one batch and
   decoded together, vs each decoded alone: every real position's logits and every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxforge.graph import signature
from onnxforge.steps.parity import metrics

# Gate 4: its steps, enough to take a short row past a tiny model's sliding window.
BATCH_STEPS = 12
# A sliding window decode runs past it by this much, up to MAX_LENGTH tokens in all.
PAST_WINDOW = 8
MAX_LENGTH = 1024
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _positions(attention_mask: np.ndarray, sequence: int) -> np.ndarray:
    """The position ids a step feeds (tests replace it to break the cache on purpose)."""
    return signature.position_ids_for(attention_mask, sequence)


class KVRunner:
    """An ONNX Runtime session of a KV-cache export, stepped as GenAI and Optimum do: the
    grown ``present`` is the next step's ``past``."""

    def __init__(self, session: Any):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.num_layers = sum(signature.PAST_KEY.format(i) in inputs for i in range(len(inputs)))
        first = inputs[signature.PAST_KEY.format(0)]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        if first.type not in _NUMPY_TYPES:
            raise ValueError(f"{first.name} is {first.type}; the runner feeds float or float16")
        self.cache_dtype = _NUMPY_TYPES[first.type]
        self.output_names = signature.kv_output_names(self.num_layers)

    def step(self, input_ids, attention_mask, past):
        positions = _positions(attention_mask, input_ids.shape[1])
        feed = signature.kv_feeds(input_ids, attention_mask, positions, past)
        out = self.session.run(self.output_names, feed)
        return np.asarray(out[0], np.float32), list(zip(out[1::2], out[2::2], strict=True))

    def empty(self, batch: int):
        return signature.empty_past(
            batch, self.num_layers, self.kv_heads, self.head_dim, self.cache_dtype
        )

    def prefill(self, token_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """Logits over a whole sequence with no cache (past length 0)."""
        token_ids = np.asarray(token_ids, np.int64)
        mask = np.ones_like(token_ids) if attention_mask is None else attention_mask
        return self.step(token_ids, mask, self.empty(token_ids.shape[0]))[0]

    def greedy(self, prompt: np.ndarray, attention_mask: np.ndarray, steps: int):
        """Prefill ``prompt`` then decode ``steps`` greedy tokens one at a time. Returns the
        prefill logits ``[batch, length, vocab]``, the tokens ``[batch, steps]`` and the
        logits each token was chosen from ``[batch, steps, vocab]``."""
        ids, mask = np.asarray(prompt, np.int64), np.asarray(attention_mask, np.int64)
        logits, past = self.step(ids, mask, self.empty(ids.shape[0]))
        prefill, chosen_from, tokens = logits, [], []
        for step in range(steps):
            last = logits[:, -1]
            chosen_from.append(last)
            tokens.append(last.argmax(-1))
            if step + 1 == steps:
                break
            ids = tokens[-1][:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
            logits, past = self.step(ids, mask, past)
        return prefill, np.stack(tokens, 1), np.stack(chosen_from, 1)


def decode_steps(generate_tokens: int, prompt_length: int, window: int) -> int:
    """At least ``generate_tokens``; past a sliding window where it fits in MAX_LENGTH."""
    if window and prompt_length + generate_tokens <= window < MAX_LENGTH - PAST_WINDOW:
        return window + PAST_WINDOW - prompt_length
    return generate_tokens


def batch_prompts(prompt: np.ndarray, vocab_size: int, seed: int) -> list[np.ndarray]:
    """Three prompts of different lengths: the decode prompt and two shorter seeded ones."""
    length = prompt.shape[1]
    rng = np.random.default_rng(seed + 1)
    lengths = sorted({max(1, length // 3), max(2, (2 * length) // 3)} - {length})
    return [rng.integers(0, vocab_size, (1, n)) for n in lengths] + [prompt]


def left_pad(prompts: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(p.shape[1] for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1] :] = p[0]
        mask[row, width - p.shape[1] :] = 1
    return ids, mask


@dataclass
class OnnxGeneration:
    """What ONNX Runtime produced for the gates, before the reference runs."""

    prompt: np.ndarray
    steps: int
    window: int
    tokens: list[int]
    step_logits: np.ndarray  # [steps, vocab]
    whole_sequence_logits: np.ndarray  # [steps, vocab]: the same positions, one prefill
    batch: dict[str, Any]


def run_onnx(runner: KVRunner, prompt: np.ndarray, settings: Any, window: int, vocab: int):
    """Gates 2-4's ONNX Runtime side."""
    steps = decode_steps(settings.generate_tokens, prompt.shape[1], window)
    _, tokens, chosen_from = runner.greedy(prompt, np.ones_like(prompt), steps)
    # Gate 3: the sequence that was decoded, in one prefill; its logits at the positions
    # the steps predicted from (the prompt's last token onwards).
    sequence = np.concatenate([prompt, tokens[:, :-1]], axis=1)
    whole = runner.prefill(sequence)[:, prompt.shape[1] - 1 :]

    prompts = batch_prompts(prompt, vocab, settings.seed)
    ids, mask = left_pad(prompts)
    batch_prefill, batch_tokens, batch_steps = runner.greedy(ids, mask, BATCH_STEPS)
    rows = []
    for row, alone_prompt in enumerate(prompts):
        alone_prefill, alone_tokens, alone_steps = runner.greedy(
            alone_prompt, np.ones_like(alone_prompt), BATCH_STEPS
        )
        length = alone_prompt.shape[1]
        rows.append(
            {
                "length": length,
                "tokens_batch": batch_tokens[row].tolist(),
                "tokens_alone": alone_tokens[0].tolist(),
                "logits_batch": np.concatenate(
                    [batch_prefill[row, ids.shape[1] - length :], batch_steps[row]]
                ),
                "logits_alone": np.concatenate([alone_prefill[0], alone_steps[0]]),
            }
        )
    return OnnxGeneration(
        prompt=prompt,
        steps=steps,
        window=window,
        tokens=tokens[0].tolist(),
        step_logits=chosen_from[0],
        whole_sequence_logits=whole[0],
        batch={"rows": rows},
    )


def _gate(record: dict[str, Any], bounds: dict[str, float]) -> tuple[dict[str, Any], list]:
    """The record with ``passed``, and its failures: the summary's gates and any token
    mismatch it lists."""
    failed = metrics.check_gates(record["summary"], bounds) + record.pop("token_failures", [])
    record["passed"] = not failed
    return record, failed


def prefill_vs_reference(
    onnx_prefill: dict[str, np.ndarray],
    reference_prefill: dict[str, np.ndarray],
    bounds: dict[str, float],
):
    """Gate 1: the KV model's prefill logits vs transformers' on the parity inputs."""
    per_input = {
        n: metrics.compare_logits(reference_prefill[n], onnx_prefill[n]) for n in onnx_prefill
    }
    return _gate({"comparisons": per_input, "summary": metrics.summarize(per_input)}, bounds)


def decode_vs_reference(
    onnx: OnnxGeneration, reference: tuple[list[int], np.ndarray], bounds: dict[str, float]
):
    """Gate 2: greedy tokens identical to transformers' generate, each step's logits within
    the gates."""
    ref_tokens, ref_logits = reference
    total = onnx.prompt.shape[1] + onnx.steps
    record = {
        "prompt": onnx.prompt[0].tolist(),
        "steps": onnx.steps,
        "onnx": onnx.tokens,
        "reference": list(ref_tokens),
        "agree": onnx.tokens == list(ref_tokens),
        "sliding_window": onnx.window,
        "length": total,
        "past_window": bool(onnx.window) and total > onnx.window,
    }
    if np.shape(ref_logits) != onnx.step_logits.shape:
        record["summary"] = {}
        record["token_failures"] = [
            f"transformers gave logits {np.shape(ref_logits)}, ONNX {onnx.step_logits.shape}"
        ]
        return _gate(record, bounds)
    record["summary"] = metrics.compare_logits(ref_logits[None], onnx.step_logits[None])
    if not record["agree"]:
        pairs = enumerate(zip(onnx.tokens, ref_tokens, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(onnx.tokens), len(ref_tokens)))
        record["token_failures"] = [
            f"tokens differ from step {first}: ONNX {onnx.tokens[first : first + 8]} vs "
            f"transformers {list(ref_tokens)[first : first + 8]}"
        ]
    return _gate(record, bounds)


def cache_consistency(onnx: OnnxGeneration, bounds: dict[str, float]):
    """Gate 3: each decode step's logits vs one prefill of the whole decoded sequence."""
    summary = metrics.compare_logits(onnx.whole_sequence_logits[None], onnx.step_logits[None])
    return _gate({"steps": onnx.steps, "summary": summary}, bounds)


def left_padded_batch(onnx: OnnxGeneration, bounds: dict[str, float]):
    """Gate 4: each row of the left-padded batch vs the same prompt alone."""
    per_row, token_failures, lengths = {}, [], []
    for row in onnx.batch["rows"]:
        name = f"length_{row['length']}"
        lengths.append(row["length"])
        per_row[name] = metrics.compare_logits(row["logits_alone"], row["logits_batch"])
        if row["tokens_batch"] != row["tokens_alone"]:
            token_failures.append(
                f"{name}: batch tokens {row['tokens_batch']} != alone {row['tokens_alone']}"
            )
    record = {
        "lengths": lengths,
        "steps": BATCH_STEPS,
        "comparisons": per_row,
        "summary": metrics.summarize(per_row),
        "token_failures": token_failures,
    }
    return _gate(record, bounds)


def gates(
    onnx_prefill: dict[str, np.ndarray],
    reference_prefill: dict[str, np.ndarray],
    onnx: OnnxGeneration,
    reference: tuple[list[int], np.ndarray],
    bounds: dict[str, float],
) -> tuple[dict[str, Any], list[str]]:
    """The four gates' records (report.json's ``generation``) and their failures."""
    results = {
        "prefill_vs_reference": prefill_vs_reference(onnx_prefill, reference_prefill, bounds),
        "decode_vs_reference": decode_vs_reference(onnx, reference, bounds),
        "cache_consistency": cache_consistency(onnx, bounds),
        "left_padded_batch": left_padded_batch(onnx, bounds),
    }
    record = {name: result for name, (result, _) in results.items()}
    failures = [f"generation {name}: {f}" for name, (_, fs) in results.items() for f in fs]
    return record, failures
