"""Shared fixtures: a tiny GPT-OSS checkpoint written by transformers, staged and exported;
and one real DAG run over every example the family registry declares."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The helpers every test folder shares (registry, bad_inputs, hub_server, images, slurm_cluster).
sys.path.insert(0, str(Path(__file__).with_name("support")))

import images
import mutation_runs
import pytest
import yaml

from onnxforge.core import paths
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.steps.export.export import export
from registry import (
    CLEAN,
    CLEAN_COPIES,
    CONFIG,
    EXAMPLES,
    F32,
    REPO,
    crosschecks,
    examples_config,
    only_f32,
    perturb,
    perturbed_checkpoints,
    target,
)

__all__ = ["REPO", "snakemake"]


def snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 600):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--cores", "2", *args]
    # Tiny models: two single-threaded jobs at once finish sooner than one job on two threads
    # (most of a tiny job is Python and compilation, one core's work).
    command += ["--set-threads", *(f"{rule}=1" for rule in ("stage", "export", "parity_report"))]
    # One --configfile with both files, last (it takes several values): later files update
    # earlier ones, while a second --configfile flag would replace the first.
    command += ["--configfile", str(REPO / "config.yaml")]
    if config is not None:
        (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
        command.append(str(workdir / "test-config.yaml"))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checkpoint")
    FAMILY.synthesize(out, seed=0, overrides={})
    return out


@pytest.fixture(scope="session")
def tiny_stage(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage")
    FAMILY.stage(tiny_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_stage, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    variant = CONFIG["variants"][F32]
    export(FAMILY, tiny_stage, out, dtype=variant["dtype"], opset=variant["opset"])
    return out


@pytest.fixture(scope="session")
def registry_build(tmp_path_factory) -> Path:
    """Every registry example, in each variant it declares, through download -> ... -> promote,
    in one Snakemake call (one download and stage per example, shared by its variants)."""
    workdir = tmp_path_factory.mktemp("registry")
    releases = [target(e, variant).release for _, e in EXAMPLES for variant in e.variants]
    releases += [paths.CROSSCHECK_PASSED.format(name=name) for name in crosschecks()]
    run = snakemake(workdir, *releases, config=examples_config(), timeout=3600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return workdir


@pytest.fixture(scope="session")
def perturbed_build(registry_build, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The same, after each family perturbed one tensor of its first dense and first MoE
    example's stage (and of the MoE one's attention and router in copies of it, checkpoints
    perturb-<part>; registry.PERTURBED): each such f32 target must now fail its gate, and its
    report's diagnosis name the perturbed layer and part (one Snakemake call, --keep-going).
    Returns what was perturbed, by target name."""
    workdir = tmp_path_factory.mktemp("perturbed") / "work"
    shutil.copytree(registry_build, workdir, symlinks=True, ignore=only_f32)
    releases = []
    for name in CLEAN_COPIES:  # built and verified already: copied, never perturbed
        built, clean = paths.Target(name, "hf", F32), paths.Target(name, CLEAN, F32)
        for step in ("download", "stage", "export", "parity"):
            shutil.copytree(workdir / getattr(built, step), workdir / getattr(clean, step))
    releases += [paths.CROSSCHECK_PASSED.format(name=name) for name in crosschecks()]
    jobs = {}  # target name -> (family, its stage, the part to perturb)
    for family, example in EXAMPLES:
        built = target(example)
        for checkpoint, part in perturbed_checkpoints(example).items():
            t = target(example, checkpoint=checkpoint)
            if checkpoint != built.checkpoint:  # the same download and stage, copied
                for step in ("download", "stage"):
                    shutil.copytree(workdir / getattr(built, step), workdir / getattr(t, step))
            jobs[t.name] = (family, workdir / t.stage, part)
            releases.append(t.release)
    with ThreadPoolExecutor(2) as pool:  # each a process of its own: two at a time, two cores
        done = {name: pool.submit(perturb, *job) for name, job in jobs.items()}
    perturbed = {name: future.result() for name, future in done.items()}
    run = snakemake(
        workdir, "--keep-going", *releases, config=examples_config(perturbed=True), timeout=3600
    )
    assert run.returncode != 0, "perturbed stages passed their gates"
    assert "parity gate failed" in run.stdout + run.stderr
    return workdir, perturbed


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """The container tests run last, and their images start building now, in the background:
    a build is mostly downloads and unpacking, which overlap the DAG tests' computing. The
    mutation test's runs start now too (mutation_runs.py)."""
    containers = [item for item in items if item.get_closest_marker("container")]
    if containers and not config.option.collectonly:
        items[:] = [item for item in items if not item.get_closest_marker("container")]
        items += containers
        images.start()
    if not config.option.collectonly and any("test_mutations" in i.nodeid for i in items):
        mutation_runs.start()  # in the background too: one process per family


def pytest_sessionfinish(session, exitstatus):
    images.stop()
    mutation_runs.stop()


def genai_tokens(folder: Path, prompt: list[int], steps: int) -> list[int]:
    """ONNX Runtime GenAI's greedy tokens after ``prompt`` from an export or release folder."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens
