"""Shared fixtures: a tiny GPT-OSS checkpoint written by transformers, staged and exported."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxforge.export import export
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.stage import stage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checkpoint")
    FAMILY.synthesize(out, seed=0, overrides={})
    return out


@pytest.fixture(scope="session")
def tiny_stage(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage")
    stage("gpt_oss", tiny_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_stage, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export("gpt_oss", tiny_stage, out, dtype="float32", opset=23)
    return out
