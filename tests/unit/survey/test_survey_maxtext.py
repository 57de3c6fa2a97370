"""The MaxText survey for real, on its smallest config, in the maxtext environment (~40 s)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO
from onnxforge.core import checkout
from onnxforge.steps.parity.metrics import check_gates
from onnxforge.survey.settings import float32_gates

MAXTEXT_PYTHON = checkout.local_python("maxtext", REPO)


@pytest.mark.maxtext
def test_one_config_through_the_survey_is_held_to_the_gates_it_is_given(tmp_path):
    """gpt3-52k goes through JAX, jax2onnx and ONNX Runtime; with a max_abs gate no float32
    export can meet, its row fails parity on that gate (the worker uses the gates it is
    handed), with metrics that meet config.yaml's gates."""
    if not MAXTEXT_PYTHON.exists():
        pytest.fail(f"{MAXTEXT_PYTHON} is missing: run `make env-maxtext`", pytrace=False)
    out = tmp_path / "survey.md"
    gates = {"max_abs": 1e-12, "top1_min": 1.0}
    command = [MAXTEXT_PYTHON, "-m", "onnxforge.survey", "--out", out]
    command += ["--only", "gpt3-52k", "--jobs", "1", "--timeout", "300"]
    command += ["--gates", json.dumps(gates)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"))  # this checkout's onnxforge
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["header"]["gates"] == gates
    assert saved["counts"] == "1 configs: 1 instantiated, 1 exported, 0 parity passed"
    (row,) = saved["rows"]
    assert row["config"] == "gpt3-52k" and row["shape"] == "symbolic"
    assert row["instantiated"] and row["exported"] and not row["parity"]
    assert row["stage"] == "parity" and row["logits_shape"] == [1, 16, 256]
    assert row["overrides"]["base_num_decoder_layers"] == 2
    assert row["error"].startswith("parity: max_abs = ")
    assert row["error"].endswith("gate requires <= 1e-12")
    assert row["metrics"]["max_abs"] > 0 and check_gates(row["metrics"], float32_gates()) == []
    assert "| gpt3-52k | yes | yes | no |" in out.read_text()
