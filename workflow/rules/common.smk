# Config validation and the helpers that turn config into targets and parameters.
import json
import os
import sys
from pathlib import Path

# Jobs run this environment's python (where onnxforge is installed), activated or not.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]

from onnxforge.catalog import (
    checkpoint_entry,
    default_targets,
    model_entry,
    parity_settings,
    validate,
    variant_entry,
)
from onnxforge.errors import InputError
from onnxforge.families import get_family

try:
    validate(config, source="config")
except InputError as err:
    raise WorkflowError(str(err)) from None


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    checkpoint=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    variant=r"[A-Za-z0-9][A-Za-z0-9_-]*",


IN_IMAGES = "apptainer" in str(workflow.deployment_settings.deployment_method).lower()


def image_for(wildcards):
    """The pinned image of the job's environment (config images), used by `--sdm apptainer`;
    without it, this environment's python runs the jobs. CUDA variants use `<env>-cuda`."""
    environment = environment_of(wildcards)
    if "variant" in wildcards.keys() and variant_of(wildcards).get("provider") == "cuda":
        environment += "-cuda"
    image = config["images"].get(environment)
    if image is None and IN_IMAGES:
        raise WorkflowError(
            f"config images.{environment} is not set: build it (make images), push it and "
            "add its docker://...@sha256 reference"
        )
    return image


def environment_of(wildcards):
    return get_family(model_entry(config, wildcards.model)["family"]).environment


def python_for_environment(environment):
    """The python that runs a job: the image's own under `--sdm apptainer`; locally this
    environment's (the `jax` one runs Snakemake itself) or `.venv-<environment>` of this
    checkout, which `make env-<environment>` builds from envs/<environment>.lock.txt."""
    if IN_IMAGES or environment == "jax":
        return "python"
    python = Path(workflow.basedir) / f".venv-{environment}" / "bin" / "python"
    if not python.exists():
        raise WorkflowError(
            f"{python} is missing: the {environment} environment runs these jobs; "
            f"build it with `make env-{environment}`"
        )
    return str(python)


def python_for(wildcards):
    return python_for_environment(environment_of(wildcards))


def provenance_image(wildcards):
    """What the step's manifest records as its image: the pinned image under apptainer, the
    image's own name inside `docker run IMAGE` (its ONNXFORGE_IMAGE), else 'local'."""
    return image_for(wildcards) if IN_IMAGES else os.environ.get("ONNXFORGE_IMAGE", "local")


# For provenance: the command line this workflow was started with, in the environment rather
# than a param so that running with other options does not rebuild anything.
for _name in ("ONNXFORGE_COMMAND", "APPTAINERENV_ONNXFORGE_COMMAND"):
    os.environ[_name] = " ".join(["snakemake", *sys.argv[1:]])

RESULT = "results/{model}/{checkpoint}"
LOGS = "results/{model}/{checkpoint}/logs"


def family_of(wildcards):
    return model_entry(config, wildcards.model)["family"]


def source_of(wildcards):
    return checkpoint_entry(config, wildcards.model, wildcards.checkpoint)["source"]


def download_patterns(wildcards):
    entry = checkpoint_entry(config, wildcards.model, wildcards.checkpoint)
    flags = [f"--include '{p}'" for p in entry.get("include", [])]
    flags += [f"--exclude '{p}'" for p in entry.get("exclude", [])]
    return " ".join(flags + [f"--extra '{n}={u}'" for n, u in entry.get("extra", {}).items()])


def variant_of(wildcards):
    return variant_entry(config, wildcards.variant)


def parity_settings_json(wildcards):
    return json.dumps(
        parity_settings(config, wildcards.model, wildcards.checkpoint, wildcards.variant)
    )
