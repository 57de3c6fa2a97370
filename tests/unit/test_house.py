"""The house rules a next engineer relies on: layers whose imports only point down, no import
circles, a driver that starts without JAX, rules that declare what they use, and
`snakemake -n` before the other environments exist."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "workflow" / "onnxforge"
# Modules that only the maxtext environment can import (they import MaxText at the top).
MAXTEXT_ONLY = {"onnxforge.families.maxtext.runtime", "onnxforge.families.maxtext.taps"}
# The layers, bottom up: a module may import its own layer and the ones below, never above.
LAYERS = {"core": 0, "graph": 1, "families": 2, "steps": 3, "driver": 4, "survey": 4}
TOP = 4  # the package's own __init__/__main__ (the command line)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
RUNS_ON_IMPORT = {name for name in MODULES if name.endswith("__main__")}  # command lines


def imports_of(path: Path) -> set[str]:
    """Every onnxforge module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else TOP


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """``module (layer) imports other (layer)`` for each import that points up a layer."""
    found = []
    for name, path in sorted(modules.items()):
        for other in sorted(imports_of(path)):
            if layer_of(other) > layer_of(name):
                found.append(
                    f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
                )
    return found


def test_every_module_sits_in_a_layer():
    loose = [n for n in MODULES if n.count(".") == 1 and n.split(".")[1] not in LAYERS]
    assert sorted(loose) == ["onnxforge.__main__"], "modules outside the layer folders"


def test_imports_only_point_down_the_layers():
    """core <- graph <- families <- steps <- driver/survey, every import (in functions too)."""
    assert upward_imports(MODULES) == []


def test_the_layer_check_names_a_planted_upward_import(tmp_path):
    """An import from core up to steps, planted in a copy of core/paths.py, is named."""
    planted = tmp_path / "paths.py"
    planted.write_text(
        MODULES["onnxforge.core.paths"].read_text()
        + "\n\ndef late():\n    from onnxforge.steps.parity import metrics\n"
    )
    found = upward_imports({**MODULES, "onnxforge.core.paths": planted})
    assert found == [
        "onnxforge.core.paths (layer 0) imports onnxforge.steps.parity.metrics (layer 3)"
    ]


def test_the_package_reads_no_files_outside_itself_but_through_the_checkout():
    """Only core/checkout.py climbs from its own file out of the package; the schema and the
    text ship as package data."""
    climbing = re.compile(r"__file__\)[^\n]*(parents\[|\.parent\.parent|\.\.)")
    found = [name for name, path in MODULES.items() if climbing.search(path.read_text())]
    assert found == ["onnxforge.core.checkout"]


def test_the_package_has_no_import_circles():
    graph = {name: imports_of(path) - {name} for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = [*chain[chain.index(name) :], name]
            pytest.fail("import circle: " + " -> ".join(cycle))
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, [*chain, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_each_module_imports_alone():
    names = sorted(set(MODULES) - MAXTEXT_ONLY - RUNS_ON_IMPORT)

    def import_alone(name: str) -> tuple[str, subprocess.CompletedProcess]:
        code = f"import importlib; importlib.import_module({name!r})"
        return name, subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )

    with ThreadPoolExecutor(2) as pool:
        failed = {n: r.stderr[-500:] for n, r in pool.map(import_alone, names) if r.returncode}
    assert not failed


def test_the_driver_validates_the_config_without_importing_jax():
    """Snakemake's startup (common.smk) imports the catalog and the family registry only."""
    code = (
        "import sys, yaml; from onnxforge.driver import catalog; "
        "from onnxforge.core import paths, providers; "
        "from onnxforge.steps.download import sources; "
        "from onnxforge.families import FAMILIES; "
        "catalog.validate(yaml.safe_load(open('config.yaml')));"
        "heavy = sorted(m for m in ('jax', 'flax', 'torch', 'transformers', 'onnxruntime') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dry_run_works_before_the_maxtext_environment_exists(tmp_path):
    """A fresh checkout with only the driver's environment: -n plans every default target and
    names the make target that builds the missing environment."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, checkout / name)
    shutil.copytree(REPO / "workflow" / "rules", checkout / "workflow" / "rules")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "make env-maxtext" in run.stdout + run.stderr
    assert "stage" in run.stdout


def test_snakemake_lint_is_clean():
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "good condition" in run.stdout + run.stderr, run.stdout[-3000:]
