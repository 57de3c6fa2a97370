"""Every case of the bad-input corpus (tests/support/bad_inputs.py) is refused by the module
function behind the step it names, with its one-line message; the steps before it accept it.
(STAGE_CASES go through the stage step in tests/unit/families/test_stage_errors.py.) Every
CLI_CASES command line is refused by ``onnxforge build``'s main before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bad_inputs import CASES, CLI_CASES, BadCommand, BadInput, source_of
from onnxforge.core.errors import InputError
from onnxforge.core.safetensors_stream import CheckpointReader
from onnxforge.driver import build
from onnxforge.driver.cli import main
from onnxforge.steps.parity.metrics import check_gates, compare_logits, summarize

GATES = {"max_abs": 1e-3, "kl_max": 1e-4, "top1_min": 1.0}


def _download(source: str, out: Path, capsys) -> tuple[int, str]:
    code = main(["download", "--source", source, "--out", str(out)])
    return code, capsys.readouterr().err


def _read_every_tensor(checkpoint: Path) -> None:
    """What stage does with the weights: open the checkpoint and read its tensors."""
    reader = CheckpointReader(checkpoint)
    for name in reader:
        reader.read(name)


def _reference_gates(checkpoint: Path) -> list[str]:
    """transformers' logits on the checkpoint, compared with themselves and gated, as parity
    compares JAX with the reference: finite weights can still give non-finite logits."""
    from onnxforge.families.reference import transformers_logits

    ids = np.random.default_rng(0).integers(0, 256, (1, 16))
    (logits,) = transformers_logits("GptOssForCausalLM", checkpoint, None, [ids])
    return check_gates(summarize({"long_1x16": compare_logits(logits, logits)}), GATES)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_step_named_refuses_it(case: BadInput, tiny_checkpoint, tmp_path, capsys):
    dest = tmp_path / "checkpoint"
    overrides = case.make(tiny_checkpoint, dest)
    out = tmp_path / "download"
    code, err = _download(source_of(overrides, dest), out, capsys)
    if case.step == "download":
        assert code == 2, err
        line = _one_line(err)
        assert line.startswith("onnxforge download: error: ") and case.expected in line
        assert ".tmp-" not in line
        assert not out.exists() and not list(tmp_path.glob("download.tmp-*"))
        return
    assert code == 0, err
    if case.step == "stage":
        with pytest.raises(InputError) as refused:
            _read_every_tensor(out)
        message = _one_line(str(refused.value))
        assert message.startswith(str(out)) and case.expected in message
        return
    _read_every_tensor(out)  # stage takes it
    failures = _reference_gates(out)
    assert any(case.expected in failure for failure in failures), failures


def test_cases_have_unique_names_and_leave_the_good_checkpoint_alone(tiny_checkpoint, tmp_path):
    assert len({case.name for case in CASES}) == len(CASES)
    before = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()}
    for case in CASES:
        case.make(tiny_checkpoint, tmp_path / case.name)
    assert {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()} == before
    assert {case.step for case in CASES} == {"download", "stage", "parity_gate"}


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_the_build_command_refuses_it(
    case: BadCommand, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    def no_snakemake(*args, **kwargs):
        raise AssertionError("Snakemake must not run")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(build.subprocess, "Popen", no_snakemake)
    assert build.main(case.arguments(tiny_checkpoint)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("onnxforge build: error: ") and case.expected in line, line
    assert not (tmp_path / "results").exists()
