# Config validation and the helpers that turn config into targets, parameters and shells.
import json
import os
import re
import sys
from pathlib import Path

from onnxforge.core import checkout, paths, progress, providers, runlock
from onnxforge.driver import resources
from onnxforge.driver.catalog import (
    checkpoint_entry,
    crosscheck_gates,
    crosscheck_targets,
    default_targets,
    lookup_target,
    model_entry,
    parity_settings,
    validate,
    variant_entry,
)
from onnxforge.core.errors import InputError
from onnxforge.families import get_family
from onnxforge.steps.download.sources import source_state

try:
    validate(config, source="config")  # fills in the schema's defaults, once
    # A target on the command line naming a model, checkpoint or variant the catalog lacks:
    # one line now, rather than a traceback from the first rule's input function.
    for _path in sys.argv[1:]:
        if names := paths.wildcards_of(_path):
            lookup_target(
                config, **{"variant": next(iter(config["variants"])), **names}, where=_path
            )
except InputError as err:
    raise WorkflowError(str(err)) from None

# A lock left by a driver that was killed (kill -9, a power cut) is removed here, before
# Snakemake checks it, so the plain command resumes; a live driver's lock is kept.
if workflow.is_main_process:
    _taken_over = runlock.take_over()
    if _taken_over:
        logger.warning(_taken_over)


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    checkpoint=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    variant=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    name=r"[A-Za-z0-9][A-Za-z0-9_-]*",  # no dot: never NAME.passed.json


IN_IMAGES = "apptainer" in str(workflow.deployment_settings.deployment_method).lower()
DOWNLOAD, STAGE, EXPORT = paths.DOWNLOAD, paths.STAGE, paths.EXPORT
PARITY, PASSED, RELEASE, LOGS = paths.PARITY, paths.PASSED, paths.RELEASE, paths.LOGS


def environment_of(wildcards):
    return family_of(wildcards).environment


def family_of(wildcards):
    return get_family(model_entry(config, wildcards.model)["family"])


def variant_of(wildcards):
    return variant_entry(config, wildcards.variant)


def job_environment(wildcards):
    """The environment a job runs in; a CUDA variant's export and parity use `<env>-cuda`."""
    environment = environment_of(wildcards)
    if "variant" in wildcards.keys() and variant_of(wildcards)["provider"] == "cuda":
        environment += "-cuda"
    return environment


def image_for_environment(environment):
    """The pinned image (config images) that `--sdm apptainer` runs the job in."""
    image = config["images"].get(environment)
    if image is None and IN_IMAGES:
        raise WorkflowError(
            f"config images.{environment} is not set: build it (make images), push it and "
            f"add its docker://...@sha256 reference"
        )
    return image


def image_for(wildcards):
    return image_for_environment(job_environment(wildcards))


_MISSING_WARNED = set()


def python_for_environment(environment):
    """The python that runs a job: the image's own under `--sdm apptainer`; locally the
    driver's for `jax`, else `.venv-<environment>` of this checkout (`make env-<environment>`
    builds it). A missing one is named when the DAG is built and fails only its jobs."""
    if IN_IMAGES:
        return "python"
    python = checkout.local_python(environment, root=workflow.basedir)
    if not python.exists() and environment not in _MISSING_WARNED:
        _MISSING_WARNED.add(environment)
        logger.warning(
            f"{python} is missing: the {environment} jobs need it; build it with "
            f"`make env-{environment}`"
        )
    return str(python)


def python_for(wildcards):
    return python_for_environment(environment_of(wildcards))


def make_target_for(wildcards):
    return f"env-{environment_of(wildcards)}"


def gpus_for(wildcards):
    return providers.gpus_for(variant_of(wildcards)["provider"])


def provenance_image(wildcards):
    """What the step's manifest records as its image: the pinned image under apptainer, the
    image's own name inside `docker run IMAGE` (its ONNXFORGE_IMAGE), else 'local'."""
    return image_for(wildcards) if IN_IMAGES else os.environ.get("ONNXFORGE_IMAGE", "local")


def onnxforge_step(arguments, console=False):
    """The shell of a step: `python -m onnxforge ARGUMENTS` in the job's environment, its
    output in the log; when it fails, its one-line error goes to the console as well
    (`console`: all of its output, for the gate's verdict).

    Every value from the config reaches the shell through `{params.x:q}` (shlex-quoted)."""
    check = (
        "command -v {params.python:q} >/dev/null || {{ echo 'onnxforge: {params.python} is "
        "missing: build it with make {params.make_target}' >&2; exit 1; }}; "
    )
    run = f"ONNXFORGE_IMAGE={{params.image:q}} {{params.python:q}} -m onnxforge {arguments}"
    if console:
        return f"{check}{run} 2>&1 | tee {{log:q}}"
    report_error = (
        "{{ status=$?; grep -h '^onnxforge ' {log:q} >&2 || tail -n 5 {log:q} >&2; exit $status; }}"
    )
    return f"{check}{run} > {{log:q}} 2>&1 || {report_error}"


# For provenance: the command line this workflow was started with, in the environment rather
# than a param so that running with other options does not rebuild anything.
for _name in ("ONNXFORGE_COMMAND", "APPTAINERENV_ONNXFORGE_COMMAND"):
    os.environ[_name] = " ".join(["snakemake", *sys.argv[1:]])
# Where the steps draw their progress bars: the driver's terminal, when it has one (a step
# on another host draws none; progress.py).
if workflow.is_main_process and (_console := progress.driver_console()):
    for _name in (progress.CONSOLE_ENV, f"APPTAINERENV_{progress.CONSOLE_ENV}"):
        os.environ[_name] = _console


def source_of(wildcards):
    return checkpoint_entry(config, wildcards.model, wildcards.checkpoint)["source"]


def download_source_state(wildcards):
    """file:// sources are hashed again every run: a changed folder reruns the download."""
    entry = checkpoint_entry(config, wildcards.model, wildcards.checkpoint)
    try:
        uris = [entry["source"], *entry.get("extra", {}).values()]
        return " ".join(source_state(uri) for uri in uris)
    except (InputError, OSError) as err:  # an unreadable file, say
        return f"refused: {err}"  # the download job itself then fails with this in its log


def download_arguments(wildcards):
    """--include/--exclude/--extra flags, as a list: each element is quoted on its own."""
    entry = checkpoint_entry(config, wildcards.model, wildcards.checkpoint)
    flags = [arg for p in entry.get("include", []) for arg in ("--include", p)]
    flags += [arg for p in entry.get("exclude", []) for arg in ("--exclude", p)]
    flags += [arg for n, u in entry.get("extra", {}).items() for arg in ("--extra", f"{n}={u}")]
    return flags


def stage_arguments(wildcards):
    entry = checkpoint_entry(config, wildcards.model, wildcards.checkpoint)
    return ["--layers", str(entry["layers"])] if entry.get("layers") else []


def export_arguments(wildcards):
    """--checkpoint DIR for a KV export (its tokenizer files), as a list."""
    if variant_of(wildcards)["decoder"] != "kv":
        return []
    target = paths.Target(wildcards.model, wildcards.checkpoint, wildcards.variant)
    return ["--checkpoint", target.download]


# Quantized variants (``quantizes: BASE``): their export is rule quantize's, from BASE's.
QUANTIZED = sorted(v for v, entry in config["variants"].items() if "quantizes" in entry)
QUANTIZED_VARIANT = "|".join(map(re.escape, QUANTIZED)) or "(?!)"  # (?!): matches nothing


def base_export(wildcards):
    """The float export a quantized variant quantizes."""
    base = variant_of(wildcards)["quantizes"]
    return paths.Target(wildcards.model, wildcards.checkpoint, base).export


def base_exports(wildcards):
    """``base_export``, as a list: none for a variant that is not quantized."""
    return [base_export(wildcards)] if "quantizes" in variant_of(wildcards) else []


def quantize_settings_json(wildcards):
    return json.dumps(variant_of(wildcards)["quantize"])


def parity_settings_json(wildcards):
    return json.dumps(
        parity_settings(config, wildcards.model, wildcards.checkpoint, wildcards.variant)
    )


def target_name(wildcards):
    return paths.Target(wildcards.model, wildcards.checkpoint, wildcards.variant).name


def sized(step, key):
    """``mem_mb`` and ``runtime`` of ``step`` from the size of its input folder ``key`` (a
    name or an index; driver/resources.py), raised at each retry."""

    def folder(input):
        return getattr(input, key) if isinstance(key, str) else input[key]

    return dict(
        mem_mb=lambda w, input, attempt: resources.memory_mb(step, folder(input), attempt),
        runtime=lambda w, input, attempt: resources.runtime_min(step, folder(input), attempt),
    )


# What every step's rule passes to onnxforge_step, besides its own params.
STEP_PARAMS = dict(image=provenance_image, python=python_for, make_target=make_target_for)
# The same for the steps over several targets (summary, crosscheck): they run in `jax`.
JAX_STEP_PARAMS = dict(
    image=lambda w: image_for_environment("jax") if IN_IMAGES else provenance_image(w),
    python=lambda w: python_for_environment("jax"),
    make_target="env",
)


def summary_state(wildcards):
    """What the index is made of, as it is now: each report and release path, timed."""
    found = sorted(Path(paths.RESULTS).glob("*/*/parity/*/report.json"))
    found += sorted(Path(paths.RESULTS, "release").glob("*/*/*/manifest.json"))
    return " ".join(f"{path}@{path.stat().st_mtime_ns}" for path in found)


def crosscheck_sides(wildcards):
    return crosscheck_targets(config, wildcards.name, where=f"crosschecks.{wildcards.name}")


def crosscheck_side_arguments(wildcards):
    """--side TARGET FAMILY PARITY DOWNLOAD per target, as a list (each quoted on its own)."""
    arguments = []
    for t in crosscheck_sides(wildcards):
        family = model_entry(config, t.model)["family"]
        arguments += ["--side", t.name, family, t.parity, t.download]
    return arguments
