import numpy as np
import pytest

from onnxforge.steps.parity.metrics import summarize
from onnxforge.steps.parity.quality import (
    QUALITY_GATES,
    greedy_prefix,
    quality_figures,
    quality_gate,
)

# The thresholds proposed for config.yaml's gates.<dtype>.quality (issue 25), from llama.cpp's
# Llama-3-8B scoreboard against FP16: Q8_0 mean KL 0.0014, 97.7% same top token, PPL ratio
# 1.0004; Q4_0 (block 32 symmetric RTN, as our int4) mean KL 0.072, PPL ratio 1.075.
INT8 = {
    "kl_mean_max": 0.005,
    "kl_p99_max": 0.04,
    "top1_min": 0.95,
    "top5_min": 0.90,
    "ppl_ratio_max": 1.01,
    "greedy_prefix_min": 16,
}
# Top-5 overlap has no published anchor: the 5th and 6th tokens are often near a tie, so it
# drops faster than top-1 under the same noise.
INT4 = {
    "kl_mean_max": 0.10,
    "kl_p99_max": 0.8,
    "top1_min": 0.85,
    "top5_min": 0.70,
    "ppl_ratio_max": 1.10,
    "greedy_prefix_min": 4,
}


def _peaked(tokens=512, vocab=256, seed=0):
    """Logits shaped like a trained model's: a clear top token over a spread tail, and a
    text sampled from them (the id at t + 1 drawn from the distribution at t)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(tokens, vocab))
    logits[np.arange(tokens), rng.integers(0, vocab, tokens)] += 9.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ids = np.concatenate([[0], [rng.choice(vocab, p=row) for row in p[:-1]]])
    return logits, ids


def _figures(candidate, reference, ids):
    figures = quality_figures(candidate, reference, ids)
    figures["greedy_prefix"] = greedy_prefix(candidate[:32].argmax(-1), reference[:32].argmax(-1))
    return figures


def test_identical_logits_give_zero_kl_and_ratio_one_exactly():
    logits, ids = _peaked(tokens=16, vocab=32)
    f = quality_figures(logits, logits.copy(), ids)
    assert f["kl_mean"] == 0.0 and f["kl_p99"] == 0.0 and f["kl_max"] == 0.0
    assert f["ppl_ratio"] == 1.0 and f["ppl_candidate"] == f["ppl_reference"]
    assert f["top1_agreement"] == 1.0 and f["top5_overlap"] == 1.0
    assert f["tokens"] == 16 and f["nonfinite"]["count"] == 0
    assert quality_gate({**f, "greedy_prefix": 32}, INT8) == []


def test_kl_of_a_two_token_vocabulary_by_hand():
    """Reference p = (0.5, 0.5) (logits 0, 0); candidate q = (0.8, 0.2) (logits ln 4, 0):
    KL(p || q) = 0.5 ln(0.5 / 0.8) + 0.5 ln(0.5 / 0.2) = 0.5 ln(25 / 16)."""
    reference = np.zeros((1, 2))
    candidate = np.array([[np.log(4.0), 0.0]])
    f = quality_figures(candidate, reference)
    assert f["kl_mean"] == pytest.approx(0.5 * np.log(25 / 16), rel=1e-12)
    assert f["kl_max"] == f["kl_p99"] == f["kl_mean"]
    assert "ppl_ratio" not in f  # no text, no perplexity


def test_kl_is_computed_in_float64_from_float32_logits():
    """A difference far below float32's resolution of the softmax still shows."""
    reference = np.zeros((1, 2), np.float32)
    candidate = np.array([[1e-3, 0.0]], np.float32)
    d = float(np.float32(1e-3))
    expected = 0.5 * np.log(0.5 * (1 + np.exp(-d))) + 0.5 * np.log(0.5 * (1 + np.exp(d)))
    assert quality_figures(candidate, reference)["kl_mean"] == pytest.approx(expected, rel=1e-6)


def test_top1_and_top5_count_shared_tokens():
    reference = np.tile(np.arange(10.0)[::-1], (4, 1))  # top 5: tokens 0..4 in order
    candidate = reference.copy()
    candidate[1, [0, 1]] = candidate[1, [1, 0]]  # top-1 differs, same top 5
    candidate[2, 9] = 100.0  # top-1 differs, top 5 shares 4 of 5
    candidate[3, [0, 9]] = candidate[3, [9, 0]]  # token 0 leaves the top 5, token 9 tops it
    f = quality_figures(candidate, reference)
    assert f["top1_agreement"] == pytest.approx(1 / 4)
    assert f["top5_overlap"] == pytest.approx((5 + 5 + 4 + 4) / 5 / 4)


def test_perplexity_ratio_on_a_crafted_text():
    """Three positions, vocabulary 2; ids (0, 1, 0, 1): positions 0..2 predict ids 1..3.
    The reference gives each next id probability 1/2, the candidate 1/4: perplexity 2 and 4."""
    reference = np.zeros((4, 2))
    candidate = np.zeros((4, 2))
    candidate[0] = candidate[2] = [np.log(3.0), 0.0]  # the next id is 1: p = 1/4
    candidate[1] = [0.0, np.log(3.0)]  # the next id is 0: p = 1/4
    candidate[3] = [50.0, 0.0]  # the last position predicts nothing: not counted
    f = quality_figures(candidate, reference, np.array([0, 1, 0, 1]))
    assert f["ppl_reference"] == pytest.approx(2.0)
    assert f["ppl_candidate"] == pytest.approx(4.0)
    assert f["ppl_ratio"] == pytest.approx(2.0)


def test_perplexity_shifts_within_each_row_of_a_batch():
    logits, ids = _peaked(tokens=12, vocab=16)
    batch = quality_figures(
        np.stack([logits, logits + 0.5 * logits[::-1]]),
        np.stack([logits, logits]),
        np.stack([ids, ids]),
    )
    rows = [
        quality_figures(c, logits, ids)["ppl_candidate"]
        for c in (logits, logits + 0.5 * logits[::-1])
    ]
    assert batch["ppl_candidate"] == pytest.approx(np.sqrt(rows[0] * rows[1]))  # mean of logs


def test_a_mask_leaves_padding_out_of_every_figure():
    logits, ids = _peaked(tokens=8, vocab=16)
    pad = 3
    reference = np.concatenate([np.zeros((pad, 16)), logits])[None]
    candidate = np.concatenate([np.full((pad, 16), np.nan), logits])[None]  # garbage padding
    candidate[0, pad:, 0] += 1e-3
    padded_ids = np.concatenate([np.zeros(pad, int), ids])[None]
    mask = np.concatenate([np.zeros(pad, int), np.ones(8, int)])[None]
    masked = quality_figures(candidate, reference, padded_ids, mask=mask)
    alone = quality_figures(candidate[0, pad:], reference[0, pad:], ids)
    assert masked["nonfinite"]["count"] == 0 and masked["tokens"] == 8
    for name in ("kl_mean", "kl_p99", "top1_agreement", "top5_overlap", "ppl_ratio"):
        assert masked[name] == pytest.approx(alone[name], rel=1e-12), name
    unmasked = quality_figures(candidate, reference, padded_ids)
    assert unmasked["nonfinite"]["count"] == 3 * 16 and quality_gate(unmasked, {})


def test_every_position_masked_is_refused():
    with pytest.raises(ValueError, match="masked"):
        quality_figures(np.zeros((1, 3, 4)), np.zeros((1, 3, 4)), mask=np.zeros((1, 3)))


def test_greedy_prefix_counts_leading_agreement():
    assert greedy_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert greedy_prefix([5, 2], [1, 2]) == 0
    assert greedy_prefix(list(range(32)), list(range(32))) == 32
    assert greedy_prefix([1, 2, 3], [1, 2]) == 2
    with pytest.raises(ValueError, match="1-D"):
        greedy_prefix(np.zeros((2, 4)), np.zeros((2, 4)))


def test_gate_failures_are_one_line_each_naming_figure_value_and_bound():
    figures = {
        "kl_mean": 0.2,
        "kl_p99": 0.01,
        "top1_agreement": 0.5,
        "top5_overlap": 0.99,
        "ppl_ratio": 1.3,
        "greedy_prefix": 3,
    }
    failures = quality_gate(figures, INT8)
    assert failures == [
        "kl_mean = 0.2, gate requires <= 0.005",
        "top1_agreement = 0.5, gate requires >= 0.95",
        "ppl_ratio = 1.3, gate requires <= 1.01",
        "greedy_prefix = 3, gate requires >= 16",
    ]
    assert all("\n" not in f for f in failures)


def test_missing_threshold_keys_are_not_gated_but_a_missing_figure_fails():
    assert quality_gate({"kl_mean": 5.0}, {}) == []
    assert quality_gate({"kl_mean": 5.0}, {"top1_min": 0.9}) == [
        "top1_agreement was not computed, gate requires >= 0.9"
    ]
    with pytest.raises(ValueError, match="unknown quality gates"):
        quality_gate({}, {"kl_mean": 0.1})


def test_nan_fails_the_quality_gate_whatever_the_thresholds():
    logits, ids = _peaked(tokens=8, vocab=16)
    broken = logits.copy()
    broken[2, 5] = np.nan
    failures = quality_gate(quality_figures(broken, logits, ids), {})
    assert len(failures) == 1 and "non-finite" in failures[0] and "[2, 5]" in failures[0]


def test_a_permuted_vocabulary_fails_every_threshold_and_slight_noise_passes_int8():
    reference, ids = _peaked()
    rng = np.random.default_rng(1)
    noisy = reference + rng.normal(scale=0.09, size=reference.shape)
    broken = reference[:, rng.permutation(reference.shape[-1])]

    passing = _figures(noisy, reference, ids)
    assert passing["kl_mean"] == pytest.approx(0.0014, rel=0.2)  # llama.cpp's Q8_0 figure
    assert quality_gate(passing, INT8) == [], passing
    assert quality_gate(passing, INT4) == []
    for thresholds in (INT4, INT8):
        failures = quality_gate(_figures(broken, reference, ids), thresholds)
        assert len(failures) == len(QUALITY_GATES)
        for gate, (figure, _) in QUALITY_GATES.items():
            assert any(f.startswith(f"{figure} = ") for f in failures), gate


def test_the_worst_over_the_text_and_the_seeded_ids_keeps_the_text_perplexity():
    reference, ids = _peaked(tokens=64, vocab=32)
    seeded, _ = _peaked(tokens=64, vocab=32, seed=3)
    per_input = {
        "text": quality_figures(reference + 0.01, reference, ids),
        "seeded": quality_figures(seeded[:, ::-1], seeded),
    }
    worst = summarize(per_input)
    assert worst["top1_agreement"] == per_input["seeded"]["top1_agreement"] < 0.5
    assert worst["kl_mean"] == per_input["seeded"]["kl_mean"]
    assert worst["ppl_ratio"] == per_input["text"]["ppl_ratio"] == pytest.approx(1.0)
    assert worst["tokens"] == 128
    assert any(f.startswith("top1_agreement") for f in quality_gate(worst, INT8))


def test_a_quantized_report_shows_both_gates_and_what_was_quantized():
    """report.md (and .html) of a quantized target: exactness (the weights' check and the
    generation gates), quality against its gates, and what the quantization did."""
    from onnxforge.steps.parity import report

    figures = {"kl_mean": 0.3, "kl_p99": 1.2, "top1_agreement": 0.6, "top5_overlap": 0.7}
    figures |= {"ppl_ratio": 1.1, "greedy_prefix": 3, "greedy_tokens": 32}
    data = {
        "target": "tiny/hf/int4-kv",
        "status": "FAIL",
        "failures": ["exactness weights: w: a dequantized value is 0.5 of its block's largest"],
        "dtype": "float32",
        "provider": "cpu",
        "gates": {"max_abs": 1e-3},
        "inputs": {"short_2x24": [2, 24]},
        "summary": {},
        "comparisons": {},
        "decode": {"prompt": [1], "onnx": [2], "jax": [2], "agree": True},
        "exactness": {
            "weights": {
                "checked": 7,
                "bound": 0.125,
                "worst": {"weight": "w", "error": 0.5},
                "failures": ["w: a dequantized value is 0.5 of its block's largest"],
            },
            "generation": {"decode_vs_reference": {"passed": True}},
        },
        "quality": {
            "gates": {"kl_mean_max": 0.5, "top1_min": 0.65},
            "gated": True,
            "failures": ["top1_agreement = 0.6, gate requires >= 0.65"],
            "overall": figures,
            "weights_only": figures,
            "deployed_vs_exact": {"max_abs": 0.4, "top1_agreement": 0.9},
        },
        "quantization": {
            "settings": {"bits": 4, "block_size": 32, "accuracy_level": 4},
            "exact_accuracy_level": 1,
            "quantized": {
                "matmuls_quantized": 7,
                "matmuls_by_bits": {"4": 7},
                "bytes": {"before": 1000, "after": 300},
                "skipped": {"router": "MoE router kept float"},
                "experts": {"moe": {"bits": 4, "block_size": 32, "fc1": {"relative": [0.08]},
                                    "fc2": {"relative": [0.09]}}},
            },
        },
    }  # fmt: skip
    markdown = report.render_markdown(data)
    assert markdown.splitlines()[0] == "# FAIL: tiny/hf/int4-kv parity (float32)"
    for line in (
        "## Exactness (quantized weights)",
        "7 quantized weights each within one quantization step",
        "| top1_agreement | 0.6 | 0.6 | >= 0.65 |",
        "Quality is gated.",
        "- top1_agreement = 0.6, gate requires >= 0.65",
        "kept float: router: MoE router kept float",
        "the worst expert's relative requantization error 0.09",
    ):
        assert line in markdown, line
    assert "Exactness (quantized weights)" in report.render_html(data)
