"""Every config.json field that changes the math, mutated in a tiny checkpoint transformers
writes (tests/support/mutations.py, in each family's environment, one process each): the
family honours it (its logits equal transformers' on the mutated checkpoint) or its stage
refuses it in one line naming the field. Where honoured, the field ignored would have moved
the logits past the parity gate: the gate sees that mistake."""

from __future__ import annotations

import mutation_runs
import pytest

from onnxforge.families import FAMILIES
from registry import CONFIG

pytestmark = pytest.mark.maxtext

GATE = CONFIG["gates"]["float32"]["max_abs"]


@pytest.fixture(scope="module")
def table() -> dict:
    """Each family's mutations, in its own environment (its transformers is the reference):
    runs conftest started in the background at collection (mutation_runs.py)."""
    results = mutation_runs.results()
    assert {name.split(":")[0] for name in results} == set(FAMILIES)
    for name, result in results.items():  # the table, in the test log (-s or on failure)
        print(f"{name:45} {result['outcome']:10} {result.get('max_abs', result.get('line'))}")
    return results


def test_every_mutation_is_honoured_or_refused_naming_its_field(table):
    wrong = {n: r for n, r in table.items() if r["outcome"] not in ("honoured", "refused")}
    assert not wrong, wrong
    for name, result in table.items():
        if result["outcome"] == "refused":
            assert result["names_the_field"] and "\n" not in result["line"], (name, result)


def test_an_honoured_field_ignored_would_fail_the_gate(table):
    honoured = {n: r for n, r in table.items() if r["outcome"] == "honoured"}
    assert len(honoured) >= 5
    for name, result in honoured.items():
        assert result["max_abs"] < GATE / 10, (name, result)  # ten times below the gate
        if result["if_ignored_max_abs"] is not None:  # None: the field sets a shape
            assert result["if_ignored_max_abs"] > GATE * 10, (name, result)
