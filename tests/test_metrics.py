import numpy as np
import pytest

from onnxforge.metrics import check_gates, compare_logits, summarize

GATES = {"max_abs": 1e-3, "kl_max": 1e-4, "top1_min": 1.0}


def test_identical_logits_pass_every_gate():
    logits = np.random.default_rng(0).normal(size=(2, 5, 11)).astype(np.float32)
    m = compare_logits(logits, logits)
    assert m["max_abs"] == 0 and m["kl_max"] == pytest.approx(0, abs=1e-12)
    assert m["top1_agreement"] == 1 and m["top5_overlap"] == 1
    assert check_gates(m, GATES) == []


def test_a_swapped_top_token_fails_the_gates():
    logits = np.zeros((1, 3, 4))
    logits[0, :, 0] = 5.0
    other = logits.copy()
    other[0, 1, 0], other[0, 1, 3] = 0.0, 5.0
    m = compare_logits(logits, other)
    assert m["top1_agreement"] == pytest.approx(2 / 3)
    failures = check_gates(m, GATES)
    assert len(failures) == 3
    assert any("top1_agreement" in f for f in failures)


def test_kl_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    p_logits, q_logits = rng.normal(size=(1, 7)), rng.normal(size=(1, 7))
    p = np.exp(p_logits) / np.exp(p_logits).sum()
    q = np.exp(q_logits) / np.exp(q_logits).sum()
    m = compare_logits(p_logits, q_logits)
    assert m["kl_max"] == pytest.approx(float(np.sum(p * np.log(p / q))))


def test_nan_never_passes():
    logits = np.ones((1, 2, 3))
    bad = logits.copy()
    bad[0, 0, 0] = np.nan
    assert check_gates(compare_logits(logits, bad), {"max_abs": 1.0})


def test_summary_takes_the_worst_input():
    s = summarize(
        {
            "a": {"max_abs": 1.0, "top1_agreement": 1.0, "tokens": 2},
            "b": {"max_abs": 0.5, "top1_agreement": 0.5, "tokens": 3},
        }
    )
    assert s == {"max_abs": 1.0, "top1_agreement": 0.5, "tokens": 5}
