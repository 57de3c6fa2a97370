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
from onnxforge.driver import catalog
from onnxforge.families import get_family

CONFIG = catalog.with_examples(yaml.safe_load((REPO / "config.yaml").read_text()))


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
            (job.rule.name, dict(job.wildcards_dict), job.container_img_url, job.resources, job)
            for job in workflow.dag.jobs
        ]


def test_every_job_resolves_to_its_environment_image(tmp_path):
    jobs = _jobs(tmp_path)
    assert {name for name, *_ in jobs} >= {
        "download",
        "stage",
        "export",
        "parity_report",
        "crosscheck_report",
    }
    for name, wildcards, image, *_ in jobs:
        if name == "all":
            continue
        if name.startswith("crosscheck"):  # compares saved logits: no family's code runs
            assert image == IMAGES["jax"], name
            continue
        family = get_family(CONFIG["models"][wildcards["model"]]["family"])
        assert image == IMAGES[family.environment], name
    assert {image for _, _, image, *_ in jobs} >= {CONFIG["images"]["jax"], MAXTEXT_IMAGE}


def test_cuda_variants_run_in_the_cuda_image(tmp_path):
    jobs = _jobs(tmp_path, ("results/release/tiny-gpt-oss/hf/bf16-cuda",))
    images = {name: image for name, _, image, *_ in jobs}
    assert images["export"] == images["parity_report"] == CUDA_IMAGE
    assert images["download"] == images["stage"] == CONFIG["images"]["jax"]


def test_only_jobs_of_a_gpu_provider_ask_for_a_gpu(tmp_path):
    targets = ("results/release/tiny-gpt-oss/hf/bf16-cuda", "results/release/tiny-gpt-oss/hf/f32")
    gpus = {
        (name, wildcards.get("variant")): resources.get("gpu", 0)
        for name, wildcards, _, resources, _ in _jobs(tmp_path, targets)
    }
    for step in ("export", "parity_report"):
        assert gpus[(step, "bf16-cuda")] == 1
        assert gpus[(step, "f32")] == 0
    assert gpus[("stage", None)] == 0


def test_every_rule_declares_threads_resources_log_and_benchmark(tmp_path):
    jobs = _jobs(tmp_path, ("results/maxtext-survey.md",)) + _jobs(tmp_path)
    for name, _, _, resources, job in jobs:
        if name == "all":
            continue
        assert resources.get("mem_mb") and resources.get("runtime"), name
        assert resources.get("_cores") == job.threads >= 1, name
        assert job.log and job.benchmark, name


def test_images_are_pinned_by_digest():
    for image in CONFIG["images"].values():
        assert re.fullmatch(r"docker://[^@]+@sha256:[0-9a-f]{64}", image)
