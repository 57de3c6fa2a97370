"""The bad-input corpus through the real DAG: every case in one Snakemake call (--keep-going).

Each must fail at the step it names, with its one-line error in that step's log and on the
console, and leave nothing that looks finished: no output of that step or a later one, no
release. Cases the config schema refuses fail before any rule runs, naming the key. The bad
`onnxforge build` command lines (CLI_CASES) are run as a user runs them, and refused before
Snakemake starts.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from bad_inputs import (
    CASES,
    CLI_CASES,
    ENTRY_CASES,
    MAXTEXT_CASES,
    STAGE_CASES,
    BadCommand,
    BadInput,
    source_of,
)
from conftest import REPO, snakemake
from onnxforge.core import paths
from onnxforge.core.errors import InputError
from onnxforge.driver import catalog
from onnxforge.families import FAMILIES
from registry import MARKS

pytestmark = pytest.mark.dag
ALL = CASES + STAGE_CASES + ENTRY_CASES + MAXTEXT_CASES
FAMILY = {case.name: case.family for case in ALL}
LOG = {"download": "download", "stage": "stage", "parity_gate": "gate"}  # paths.TARGET_STEPS
# What exists after each step: a step that fails leaves its own output and every later one out.
OUTPUTS = ("download", "stage", "export", "parity", "passed")


def _entry(case: BadInput, good, root) -> dict:
    dest = root / case.name
    overrides = case.make(good, dest) or {}
    return {**overrides, "source": source_of(overrides, dest)}


def _config(entries: dict[str, dict]) -> dict:
    return {
        "models": {
            name: {"family": FAMILY[name], "checkpoints": {"hf": entry}}
            for name, entry in entries.items()
        },
        "targets": [{"model": name, "checkpoint": "hf", "variant": "f32"} for name in entries],
    }


def _valid(config: dict) -> bool:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    try:
        catalog.validate(catalog.deep_update(copy.deepcopy(base), copy.deepcopy(config)))
    except InputError:
        return False
    return True


@pytest.fixture(scope="module")
def corpus_run(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    good = {"gpt_oss": tiny_checkpoint, "maxtext": root / "tiny-llama"}
    FAMILIES["maxtext"].synthesize(good["maxtext"], seed=0, overrides={"arch": "llama"})
    entries = {case.name: _entry(case, good[case.family], root / "inputs") for case in ALL}
    valid = {name: e for name, e in entries.items() if _valid(_config({name: e}))}
    workdir = root / "work"
    workdir.mkdir()
    run = snakemake(workdir, "--keep-going", config=_config(valid), timeout=1800)
    return workdir, valid, entries, run


def test_the_corpus_has_seventy_cases_or_more_in_both_families():
    assert len(ALL + CLI_CASES) >= 70
    assert {"gpt_oss", "maxtext"} <= {case.family for case in ALL}
    names = [case.name for case in ALL + CLI_CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_the_build_command_line_is_refused_in_one_line(case: BadCommand, tiny_checkpoint, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", *case.arguments(tiny_checkpoint)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxforge build: error: "), run.stderr
    assert case.expected in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake").exists()


def _marked(case: BadInput):
    return pytest.param(case, id=case.name, marks=MARKS.get(FAMILIES[case.family].environment, []))


@pytest.mark.parametrize("case", [_marked(case) for case in ALL])
def test_the_case_fails_at_its_step_with_one_clear_line(corpus_run, case):
    workdir, valid, entries, run = corpus_run
    console = run.stdout + run.stderr
    assert run.returncode != 0
    if case.name not in valid:  # refused by the config's validation, before any rule
        alone_dir = workdir.parent / f"alone-{case.name}"
        alone_dir.mkdir(exist_ok=True)
        alone = snakemake(alone_dir, "-n", config=_config({case.name: entries[case.name]}))
        assert alone.returncode != 0
        assert f"models.{case.name}.checkpoints.hf" in alone.stdout + alone.stderr
        return
    target = paths.Target(case.name, "hf", "f32")
    log = workdir / target.log(LOG[case.step])
    assert case.expected in log.read_text(), log.read_text()[-2000:]
    lines = [line for line in console.splitlines() if case.expected in line]
    assert lines, f"the console does not show {case.expected!r}"
    assert all(".tmp-" not in line for line in lines)
    if case.step != "parity_gate":
        # (in the line: parallel jobs' output may share a console line with Snakemake's own)
        assert any(f"onnxforge {case.step}: error: " in line for line in lines), lines
    step_outputs = {
        "download": target.download,
        "stage": target.stage,
        "export": target.export,
        "parity": target.parity,
        "passed": target.passed,
    }
    first_missing = {"download": 0, "stage": 1, "parity_gate": 4}[case.step]
    for name in OUTPUTS[first_missing:]:
        assert not (workdir / step_outputs[name]).exists(), name
    assert not list((workdir / "results").rglob("*.tmp-*"))
    assert not (workdir / target.release).exists()
