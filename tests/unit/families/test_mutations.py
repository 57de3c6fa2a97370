"""Every config.json field that changes the math, mutated in a tiny checkpoint transformers
writes (tests/support/mutations.py, in each family's environment, one process each): the
family honours it (its logits equal transformers' on the mutated checkpoint) or its stage
refuses it in one line naming the field. Where honoured, the field ignored would have moved
the logits past the parity gate: the gate sees that mistake."""

from __future__ import annotations

import json
import subprocess

import pytest

from onnxforge.families import FAMILIES
from registry import CONFIG, REPO, python_for

pytestmark = pytest.mark.maxtext

MUTATIONS = REPO / "tests" / "support" / "mutations.py"
GATE = CONFIG["gates"]["float32"]["max_abs"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """Each family's mutations, in its own environment (its transformers is the reference),
    the families side by side (a process each, one core each)."""
    folder = tmp_path_factory.mktemp("mutations")
    runs = {
        family.name: subprocess.Popen(
            [str(python_for(family)), str(MUTATIONS), str(folder / family.name), family.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for family in FAMILIES.values()
    }
    results = {}
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=1200)
        assert run.returncode == 0, stderr[-3000:]
        results |= json.loads((folder / name).read_text())
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
