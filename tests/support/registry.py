"""The test cases the family registry declares: every family's examples, and how to build
them through the real DAG in one Snakemake call.

Adding a family, or an architecture to the maxtext family, adds its examples here without
touching a test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from onnxforge.core import checkout, paths
from onnxforge.driver import catalog
from onnxforge.families import FAMILIES
from onnxforge.families.base import PERTURB_DEFAULT, Example, Family

REPO = Path(__file__).resolve().parents[2]  # tests/support/registry.py
CONFIG = catalog.validate(yaml.safe_load((REPO / "config.yaml").read_text()))
F32 = "f32"
# The markers of each environment's tests, so `-m "not maxtext"` keeps working.
MARKS = {"maxtext": [pytest.mark.maxtext]}

EXAMPLES: list[tuple[Family, Example]] = [
    (family, example) for family in FAMILIES.values() for example in family.examples
]


def example_params(only: set[str] | None = None) -> list:
    """(family, example) for each example (``only``: those named)."""
    return [
        pytest.param(family, example, id=example.name, marks=MARKS.get(family.environment, []))
        for family, example in EXAMPLES
        if only is None or example.name in only
    ]


def variant_params(quantized: bool = False) -> list:
    """(family, example, variant) for each variant each example declares (Example.variants):
    what the registry build builds; the float ones, or (``quantized``) the quantized ones,
    whose gates differ (tests/dag/test_quantized.py)."""
    return [
        pytest.param(
            family,
            example,
            variant,
            id=f"{example.name}-{variant}",
            marks=MARKS.get(family.environment, []),
        )
        for family, example in EXAMPLES
        for variant in example.variants
        if catalog.is_quantized(CONFIG, variant) == quantized
    ]


def target(example: Example, variant: str = F32, checkpoint: str = "hf") -> paths.Target:
    return paths.Target(example.name, checkpoint, variant)


# The perturbed build (conftest.perturbed_build) perturbs, per family, its first dense example
# (an MLP tensor) and its first MoE example (an expert in its `hf` stage; the attention and the
# router in copies, checkpoints perturb-<part>), and the twin of a checkpoint that another
# implementation builds too (an expert; the crosscheck then has one odd one out against the
# clean copy, CLEAN below): each kind of layer and each part the diagnosis names, in every
# family, at 8 targets rather than 18, each a re-export and a parity run (most of CI's time
# went there). Every architecture is held to the gates by the clean registry build.
MOE_PARTS = ("attention", "router")


def _first(family: Family, moe: bool) -> str | None:
    return next((e.name for e in family.examples if e.moe == moe), None)


EVERY_PART = {_first(family, moe=True) for family in FAMILIES.values()} - {None}
PERTURBED = EVERY_PART | {_first(family, moe=False) for family in FAMILIES.values()} - {None}
PERTURBED |= {e.name for _, e in EXAMPLES if e.same_checkpoint_as}


def perturbed_checkpoints(example: Example) -> dict[str, str]:
    """checkpoint name -> the part its stage has perturbed (none: not in the perturbed build)."""
    if example.name not in PERTURBED:
        return {}
    if not example.moe:
        return {"hf": PERTURB_DEFAULT}
    if example.name not in EVERY_PART:
        return {"hf": "expert"}
    return {"hf": "expert", **{f"perturb-{part}": part for part in MOE_PARTS}}


# In the perturbed build, the checkpoint another implementation also builds keeps an
# unperturbed copy (checkpoint "clean"): the crosscheck then has exactly one odd one out.
CLEAN = "clean"
CLEAN_COPIES = {e.same_checkpoint_as for _, e in EXAMPLES if e.same_checkpoint_as}


def examples_config(perturbed: bool = False) -> dict:
    """A config overlay with one catalog model per example, each of its variants a default
    target, and their crosschecks; with ``perturbed``, the MoE examples' extra checkpoints and
    the clean copies too (not default targets), and the crosschecks of the clean copies."""

    def checkpoints(example: Example) -> list[str]:
        if not perturbed:
            return ["hf"]
        extra = [CLEAN] if example.name in CLEAN_COPIES else []
        return [*dict.fromkeys(["hf", *perturbed_checkpoints(example)]), *extra]

    models = {
        example.name: {
            "family": family.name,
            "options": example.options,
            "checkpoints": {name: {"source": example.source} for name in checkpoints(example)},
        }
        for family, example in EXAMPLES
    }
    targets = [  # the perturbed build: f32 only (its copy of the registry build has no other)
        {"model": e.name, "checkpoint": "hf", "variant": variant}
        for _, e in EXAMPLES
        for variant in ((F32,) if perturbed else e.variants)
    ]
    clean = dict.fromkeys(CLEAN_COPIES, CLEAN) if perturbed else {}
    return {"models": models, "targets": targets, "crosschecks": crosschecks(clean)}


def crosschecks(checkpoint: dict[str, str] | None = None) -> dict:
    """One crosscheck per checkpoint that several examples build (same_checkpoint_as), each
    example's ``checkpoint.get(name, "hf")``."""
    checkpoint = checkpoint or {}
    groups: dict[str, list[str]] = {}
    for _, example in EXAMPLES:
        if example.same_checkpoint_as:
            groups.setdefault(example.same_checkpoint_as, [example.same_checkpoint_as])
            groups[example.same_checkpoint_as].append(example.name)
    return {
        catalog.crosscheck_name(first): {
            "targets": [
                {"model": name, "checkpoint": checkpoint.get(name, "hf"), "variant": F32}
                for name in names
            ]
        }
        for first, names in groups.items()
    }


def only_f32(directory: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ignore: the other variants' folders, files and logs (the perturbed
    build copies the registry build's f32 targets only: a perturbed stage would make the
    rest stale, and rebuilt by any rule that reads the default targets)."""
    others = {v for _, e in EXAMPLES for v in e.variants} - {F32}
    return {
        name
        for name in names
        for v in others
        if name == v or name.startswith(f"{v}.") or f"-{v}." in name
    }


def python_for(family: Family) -> Path:
    """The interpreter of the family's environment, as the local DAG runs it."""
    python = checkout.local_python(family.environment, REPO)
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make env-{family.environment}`", pytrace=False)
    return python


def perturb(family: Family, stage_dir: Path, part: str = PERTURB_DEFAULT) -> str:
    """The family's own perturbation of a stage, run in its environment."""
    command = [str(python_for(family)), "-m", "onnxforge", "perturb", "--family", family.name]
    run = subprocess.run(
        [*command, "--stage", str(stage_dir), "--part", part],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Snakemake dates a directory output by its .snakemake_timestamp: the stage is now newer.
    (stage_dir / ".snakemake_timestamp").touch()
    return run.stdout.strip()
