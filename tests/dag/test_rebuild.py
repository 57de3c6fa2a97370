"""Two clean builds of the tiny GPT-OSS target are the same bytes (benchmarks/rebuild_compare.py):
every ONNX file, report, staged parameter file and manifest (outside its volatile block), and
the stage's values block."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO, snakemake
from registry import examples_config

pytestmark = pytest.mark.dag


def rebuild_compare():
    spec = importlib.util.spec_from_file_location(
        "rebuild_compare", REPO / "benchmarks" / "rebuild_compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_two_clean_builds_are_identical(registry_build, tmp_path):
    compare = rebuild_compare()
    target = compare.TARGET
    workdir = tmp_path / "second"
    workdir.mkdir()
    # The same call as the registry's build (its config, its thread settings), fresh.
    run = snakemake(workdir, target.release, config=examples_config())
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    rows = compare.compare(registry_build, workdir, target)
    different = [(row.path, row.note) for row in rows if not row.identical]
    assert not different
    names = {row.path.rsplit("/", 1)[-1] for row in rows}
    assert {"model.onnx", "model.onnx.data", "report.json", "manifest.json"} <= names
    assert any("/stage/params/" in row.path for row in rows)
    assert any(row.kind == "values" for row in rows)
