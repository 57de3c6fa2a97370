"""With `--sdm apptainer`, every job of the DAG runs in the pinned image of its environment."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    OutputSettings,
    ResourceSettings,
    StorageSettings,
)

from conftest import REPO
from onnxforge.families import get_family

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


CUDA_IMAGE = "docker://example.org/onnxforge-cuda@sha256:" + "c" * 64
MAXTEXT_IMAGE = "docker://example.org/onnxforge-maxtext@sha256:" + "d" * 64
IMAGES = {**CONFIG["images"], "jax-cuda": CUDA_IMAGE, "maxtext": MAXTEXT_IMAGE}


def _jobs(workdir: Path, targets: tuple[str, ...] = ()):
    extra = workdir / "images.yaml"
    extra.write_text(yaml.safe_dump({"images": IMAGES}))
    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[REPO / "config.yaml", extra]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )
        dag_settings = DAGSettings(forceall=True, targets=set(targets))
        workflow = workflow_api.dag(dag_settings=dag_settings).workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        return [
            (job.rule.name, dict(job.wildcards_dict), job.container_img_url)
            for job in workflow.dag.jobs
        ]


def test_every_job_resolves_to_its_environment_image(tmp_path):
    jobs = _jobs(tmp_path)
    assert {name for name, _, _ in jobs} >= {"download", "stage", "export", "parity_report"}
    for name, wildcards, image in jobs:
        if name == "all":
            continue
        family = get_family(CONFIG["models"][wildcards["model"]]["family"])
        assert image == IMAGES[family.environment], name
    assert {image for _, _, image in jobs} >= {CONFIG["images"]["jax"], MAXTEXT_IMAGE}


def test_cuda_variants_run_in_the_cuda_image(tmp_path):
    jobs = _jobs(tmp_path, ("results/release/tiny-gpt-oss/hf/bf16-cuda",))
    images = {name: image for name, _, image in jobs}
    assert images["export"] == images["parity_report"] == CUDA_IMAGE
    assert images["download"] == images["stage"] == CONFIG["images"]["jax"]


def test_images_are_pinned_by_digest():
    for image in CONFIG["images"].values():
        assert re.fullmatch(r"docker://[^@]+@sha256:[0-9a-f]{64}", image)
