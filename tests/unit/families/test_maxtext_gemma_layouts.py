"""Gemma (v1) from the Hugging Face layout alone: stage writes the Flax layout MaxText's
converter reads from the Hugging Face tensors, and stages the very values the Flax layout of
the same weights gives (maxtext environment, one process: two stages)."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from onnxforge.core import checkout

MAXTEXT_PYTHON = checkout.local_python("maxtext", REPO)

BOTH_LAYOUTS = r"""
import sys
from pathlib import Path
from onnxforge.families.maxtext import FAMILY

root = Path(sys.argv[1])
FAMILY.synthesize(root / "both", 0, {"arch": "gemma"})
FAMILY.synthesize(root / "hf-only", 0, {"arch": "gemma", "flax": "false"})
assert (root / "both/flax").is_dir() and not (root / "hf-only/flax").exists()
staged = {
    name: FAMILY.stage(root / name, root / f"stage-{name}", options={"model": "gemma-2b"}).values
    for name in ("both", "hf-only")
}
assert staged["both"] and staged["both"] == staged["hf-only"], "the layouts staged differently"
print("same values:", len(staged["both"]))
"""


@pytest.mark.maxtext
def test_gemma_from_the_hugging_face_layout_stages_what_the_flax_layout_does(tmp_path):
    if not MAXTEXT_PYTHON.exists():
        pytest.fail(f"{MAXTEXT_PYTHON} is missing: run `make env-maxtext`", pytrace=False)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), JAX_PLATFORMS="cpu")
    command = [MAXTEXT_PYTHON, "-c", BOTH_LAYOUTS, str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "same values:" in done.stdout
