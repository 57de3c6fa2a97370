import numpy as np
import pytest

from onnxforge.core.errors import InputError
from onnxforge.core.finite import check_finite, find_nonfinite, nonfinite
from onnxforge.steps.parity.metrics import check_gates, compare_logits, summarize

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


def _with(value, index=(0, 1, 2), shape=(2, 3, 5)):
    clean = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    bad = clean.copy()
    bad[index] = value
    return clean, bad


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_candidate_is_recorded_with_side_and_position(value):
    clean, bad = _with(value)
    record = compare_logits(clean, bad)["nonfinite"]
    assert record["count"] == 1
    assert record["reference"] is None
    assert record["candidate"] == {"count": 1, "index": [0, 1, 2], "value": str(value)}


def test_a_nonfinite_reference_is_recorded_too():
    clean, bad = _with(np.nan, index=(1, 2, 4))
    record = compare_logits(bad, clean)["nonfinite"]
    assert record["candidate"] is None and record["reference"]["index"] == [1, 2, 4]


def test_finite_logits_record_no_nonfinite_values():
    logits = np.ones((1, 2, 3))
    assert compare_logits(logits, logits)["nonfinite"] == {
        "count": 0,
        "reference": None,
        "candidate": None,
    }


def test_nonfinite_pair_reports_the_first_position_and_count():
    reference = np.zeros((2, 4), dtype=np.float32)
    candidate = reference.copy()
    candidate[1, 3] = candidate[1, 1] = np.nan
    candidate[0, 2] = np.inf
    assert nonfinite(reference, candidate) == {
        "count": 3,
        "reference": None,
        "candidate": {"count": 3, "index": [0, 2], "value": "inf"},
    }


@pytest.mark.parametrize("gates", [GATES, {"top1_min": 0.0}, {"max_abs": 1e9}, {}])
def test_nan_logits_fail_whatever_the_gates(gates):
    """Even gates a NaN does not reach (top-1 of the other tokens, a huge max_abs, none)."""
    clean, bad = _with(np.nan)
    failures = check_gates(summarize({"long": compare_logits(clean, bad)}), gates)
    assert failures
    assert any("non-finite" in f and "candidate" in f and "'long'" in f for f in failures)
    assert any("[0, 1, 2]" in f for f in failures)


def test_summary_keeps_nan_and_names_the_input():
    """Python's max() skips NaN (and an all-NaN metric came out as -inf): the summary must not."""
    clean, bad = _with(np.nan)
    s = summarize({"short": compare_logits(clean, clean), "long": compare_logits(clean, bad)})
    assert np.isnan(s["max_abs"]) and np.isnan(s["kl_max"])
    assert s["nonfinite"]["count"] == 1
    assert list(s["nonfinite"]["inputs"]) == ["long"]
    only_nan = summarize({"a": {"max_abs": float("nan")}, "b": {"max_abs": float("nan")}})
    assert np.isnan(only_nan["max_abs"])
    assert check_gates(only_nan, {"max_abs": 1.0})
    nan_first = summarize({"a": {"max_abs": float("nan")}, "b": {"max_abs": 0.5}})
    assert np.isnan(nan_first["max_abs"])


def test_a_missing_metric_fails_its_gate():
    assert check_gates(summarize({}), {"max_abs": 1.0}) == [
        "max_abs was not computed, gate requires <= 1"
    ]


def test_check_finite_names_the_tensor_and_position():
    weights = np.ones((3, 4), dtype=np.float32)
    check_finite("model.safetensors: tensor 'w'", weights)
    check_finite("ids", np.arange(5))
    weights[2, 1] = np.nan
    weights[2, 3] = np.inf
    expected = r"^model\.safetensors: tensor 'w': 2 of 12 values are not finite \(first: nan at"
    with pytest.raises(InputError, match=expected + r" \[2, 1\]\)"):
        check_finite("model.safetensors: tensor 'w'", weights)


def test_check_finite_reads_bfloat16_in_chunks():
    import ml_dtypes

    weights = np.zeros(10_000, dtype=ml_dtypes.bfloat16)
    weights[9_999] = np.inf
    assert find_nonfinite(weights, chunk=1000) == {"count": 1, "index": [9999], "value": "inf"}
    with pytest.raises(InputError, match="1 of 10000 values"):
        check_finite("w", weights)


def test_find_nonfinite_scans_a_transpose_in_slabs():
    weights = np.zeros((300, 40), dtype=np.float32)
    weights[7, 250 % 40] = np.nan
    weights[299, 0] = -np.inf
    view = weights.T  # not contiguous: must not be copied whole
    assert find_nonfinite(view, chunk=64) == {"count": 2, "index": [0, 299], "value": "-inf"}
    assert find_nonfinite(weights, chunk=64) == {"count": 2, "index": [7, 10], "value": "nan"}
    assert find_nonfinite(np.float32(np.inf)) == {"count": 1, "index": [], "value": "inf"}
    assert find_nonfinite(np.zeros((0, 3), dtype=np.float32)) is None


def test_top10_overlap_jaccard_and_rank_agreement():
    reference = np.arange(20, dtype=np.float64)[None, :]  # ranks: 19, 18, ..., 10
    candidate = reference.copy()
    candidate[0, [19, 18]] = candidate[0, [18, 19]]  # the top two swap places
    candidate[0, 10] = -1.0  # the tenth leaves the top ten; token 9 comes in
    m = compare_logits(reference, candidate)
    assert m["top10_overlap"] == pytest.approx(0.9)
    assert m["top10_jaccard"] == pytest.approx(9 / 11)
    assert m["top10_rank_agreement"] == pytest.approx(7 / 10)  # ranks 3..9 agree
    worst = summarize({"a": m, "b": compare_logits(reference, reference)})
    assert worst["top10_jaccard"] == pytest.approx(9 / 11)  # the worse of the two
