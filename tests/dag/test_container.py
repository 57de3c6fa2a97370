"""The images: each builds from its lock; the CPU one runs the tiny model and a mounted
checkpoint (`IMAGE /ckpt`) as the caller and carries nothing of the host's; the CUDA one has
JAX's CUDA plugin and ONNX Runtime's CUDA provider with their libraries; the MaxText one runs
a tiny MaxText model's steps to a passed gate.

Builds ``onnxforge-<flavor>:<lock sha256[:12]>`` with containers/build.sh every time, once per
session: in the background from collection on, while the other tests run (tests/support/images.py;
these tests run last). The engine's layer cache makes a rebuild quick when only the workflow
changed, and the image never runs stale code. Needs podman (``make system-deps``); without it
these tests fail, they do not skip. No GPU is needed: the CUDA image's checks load its CUDA
libraries without a device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import images
import pytest
import yaml

from conftest import REPO
from onnxforge.driver.catalog import (
    checkpoint_entry,
    model_entry,
    parity_settings,
    validate,
    variant_entry,
)
from onnxforge.families import FAMILIES

pytestmark = pytest.mark.container
REPORT = Path("tiny-gpt-oss/hf/parity/f32/report.json")
MOUNTED_REPORT = Path("mounted/local/parity/f32/report.json")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
ENVIRONMENTS = {"cpu": "jax", "cuda": "jax-cuda", "maxtext": "maxtext"}
GPT_OSS, MAXTEXT = FAMILIES["gpt_oss"], FAMILIES["maxtext"]


def podman(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `make system-deps` (podman, runc, mmdebstrap)")
    return images.engine_env()


def build(flavor: str, env: dict[str, str]) -> str:
    """containers/build.sh FLAVOR; the tag for the current lock, labelled with its hash."""
    lock_sha = hashlib.sha256((REPO / f"envs/{ENVIRONMENTS[flavor]}.lock.txt").read_bytes())
    lock_sha = lock_sha.hexdigest()
    tag = f"localhost/onnxforge-{flavor}:{lock_sha[:12]}"
    build = images.built(flavor, env)  # started in the background at collection (conftest)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    inspect = podman("image", "inspect", tag, env=env)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["Labels"]["io.onnxforge.lock.sha256"] == lock_sha
    assert f"ONNXFORGE_IMAGE={flavor}" in config["Env"]
    return tag


@pytest.fixture(scope="module")
def image(env) -> str:
    return build("cpu", env)


@pytest.fixture(scope="module")
def cuda_image(env) -> str:
    return build("cuda", env)


@pytest.fixture(scope="module")
def maxtext_image(env) -> str:
    return build("maxtext", env)


def python_in(image: str, code: str, env: dict[str, str]):
    """The JSON that ``code`` prints last, run by the image's python."""
    run = podman("run", "--rm", "--entrypoint", "python", image, "-c", code, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return json.loads(run.stdout.splitlines()[-1])


def _run_as(env) -> tuple[int, int, list[str]]:
    """The uid:gid to run as, and the flags: the caller's; a non-root one when the caller is root
    (root would prove nothing about ownership or a writable HOME)."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        uid, gid = 4242, 4242
    flags = ["--user", f"{uid}:{gid}"]
    rootless = podman("info", "--format", "{{.Host.Security.Rootless}}", env=env)
    if rootless.stdout.strip() == "true":
        flags.insert(0, "--userns=keep-id")  # else uid maps to a subordinate id on the host
    return uid, gid, flags


def test_tiny_model_and_a_mounted_checkpoint_build_in_the_container_as_the_caller(
    image, env, tmp_path
):
    """`IMAGE tiny-gpt-oss /ckpt`: a catalog model and a checkpoint folder mounted read-only
    (no config file), in one run."""
    uid, gid, flags = _run_as(env)
    results = tmp_path / "results"
    results.mkdir()
    checkpoint = tmp_path / "my-checkpoint"
    GPT_OSS.synthesize(checkpoint, seed=3, overrides={})
    for path in checkpoint.iterdir():  # safetensors writes 0600: readable by the caller only
        path.chmod(0o644)
    if os.getuid() == 0:
        os.chown(results, uid, gid)
    run = podman(
        "run", "--rm", "-v", f"{results}:/work/results", "-v", f"{checkpoint}:/ckpt:ro", *flags,
        image, "tiny-gpt-oss", "/ckpt", "--name", "mounted", "--variant", "f32", env=env,
        timeout=1800,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for report_path in (REPORT, MOUNTED_REPORT):
        report = json.loads((results / report_path).read_text())
        assert report["status"] == "PASS"
        assert (results / report_path.parent.parent / "f32.passed.json").exists()
    assert "/ckpt: model_type 'gpt_oss' -> family gpt_oss; also maxtext" in out
    assert "results name mounted/local" in out
    assert "PASS       mounted/local/f32" in out
    assert "release: results/release/mounted/local/f32" in out
    assert (results / "release/mounted/local/f32/model.onnx").is_file()
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in results.rglob("*")}
    assert owners == {(uid, gid)}, f"files on the host owned by {owners}, expected {uid}:{gid}"
    assert not list(results.rglob("*.tmp-*"))


def test_help_lists_the_catalog(image, env):
    run = podman("run", "--rm", image, "--help", env=env)
    assert run.returncode == 0, run.stderr
    assert "tiny-gpt-oss" in run.stdout


def test_a_maxtext_checkpoint_is_refused_in_one_line_in_the_cpu_image(image, env, tmp_path):
    """The cpu image holds the jax environment only: a Llama folder gets one line, not a run
    whose every MaxText job fails."""
    checkpoint = tmp_path / "llama"
    MAXTEXT.synthesize(checkpoint, seed=0, overrides={"arch": "llama"})
    run = podman("run", "--rm", "-v", f"{checkpoint}:/ckpt:ro", image, "/ckpt", env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    error = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(error) == 1, run.stderr
    assert "maxtext environment, which the onnxforge-cpu image lacks" in error[0]


def test_image_carries_no_host_pip_config_or_ca(image, env):
    config = json.loads(podman("image", "inspect", image, env=env).stdout)[0]["Config"]
    names = {entry.split("=", 1)[0] for entry in config.get("Env") or []}
    assert not names & {"PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"}
    assert config["Env"] and "ONNXFORGE_IMAGE=cpu" in config["Env"]

    paths = "/etc/pip.conf /etc/xdg/pip /root/.config/pip /root/.pip /tmp/.config/pip"
    paths += " /run/secrets/hostca"  # /run/secrets itself is an empty mount point
    check = podman(
        "run", "--rm", "--entrypoint", "sh", image, "-c",
        f"for p in {paths}; do test ! -e $p || {{ echo $p; exit 1; }}; done",
        env=env,
    )  # fmt: skip
    assert check.returncode == 0, f"in the image: {check.stdout}{check.stderr}"

    pip_config = podman("run", "--rm", "--entrypoint", "pip", image, "config", "list", env=env)
    assert pip_config.returncode == 0, pip_config.stderr
    assert pip_config.stdout.strip() == ""

    if HOST_CA.exists():  # no file in the image is the host's CA bundle
        data = HOST_CA.read_bytes()
        same_size = podman(
            "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c",
            f"find / -xdev -type f -size {len(data)}c -exec sha256sum {{}} +",
            env=env,
        )  # fmt: skip
        assert hashlib.sha256(data).hexdigest() not in same_size.stdout, same_size.stdout


# No GPU here: the CUDA checks import and load, they run nothing on a device. jax falls back
# to the CPU (its CUDA plugin fails at cuInit without a driver, after its library checks).
CUDA_CHECK = """
import ctypes, importlib.metadata as md, json, os, pathlib
import jax, jaxlib, jax_cuda12_plugin
import jax_plugins.xla_cuda12 as plugin
import onnxruntime as ort

# What jax's CUDA plugin loads at initialize(): the nvidia-*-cu12 wheels' libraries, found
# from the wheels (no LD_LIBRARY_PATH), at least the versions the plugin was built against.
plugin._import_extensions()
plugin._load_nvidia_libraries()
v = plugin.cuda_versions
cuda = {n: (getattr(v, n + "_get_version")(), getattr(v, n + "_build_version")())
        for n in ("cuda_runtime", "cudnn", "cublas", "cufft", "cusparse", "cupti")}

# ONNX Runtime's CUDA provider library, with the CUDA and cuDNN libraries it links.
ort.preload_dlls()
ctypes.CDLL(str(pathlib.Path(ort.__file__).parent / "capi/libonnxruntime_providers_cuda.so"))
try:
    md.distribution("onnxruntime")
    cpu_ort = True
except md.PackageNotFoundError:
    cpu_ort = False
print(json.dumps({
    "jax": jax.__version__, "jaxlib": jaxlib.__version__,
    "plugin": md.version("jax-cuda12-plugin"), "pjrt": md.version("jax-cuda12-pjrt"),
    "cuda": cuda, "ort": ort.__version__, "providers": ort.get_available_providers(),
    "cpu_ort": cpu_ort, "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
}))
"""


def test_cuda_image_has_jax_cuda_and_onnxruntime_gpu(cuda_image, env):
    found = python_in(cuda_image, CUDA_CHECK, env)
    lock = (REPO / "envs/jax-cuda.lock.txt").read_text()
    assert f"\njax=={found['jax']} " in lock and found["jaxlib"] == found["jax"]
    assert found["plugin"] == found["pjrt"] == found["jax"]
    for name, (runtime, built) in found["cuda"].items():
        assert runtime >= built, f"{name}: {runtime} older than jax's build ({built})"
    assert f"\nonnxruntime-gpu=={found['ort']} " in lock
    assert "CUDAExecutionProvider" in found["providers"]
    assert not found["cpu_ort"], "the CPU onnxruntime would shadow onnxruntime-gpu"
    assert found["ld_library_path"] is None


MAXTEXT_MODEL, CHECKPOINT, VARIANT = "tiny-llama", "hf", "f32"


MAXTEXT_PACKAGES = ("maxtext", "tensorflow-cpu", "jax2onnx", "jax", "onnxruntime", "torch")
MAXTEXT_CHECK = f"""
import importlib.metadata as md, json, sys
import maxtext, tensorflow, jax2onnx, jax, onnxruntime, torch, transformers
from maxtext.configs import pyconfig
print(json.dumps({{"python": sys.version.split()[0],
                  **{{p: md.version(p) for p in {MAXTEXT_PACKAGES!r}}}}}))
"""


def test_maxtext_image_imports_maxtext_tensorflow_and_jax2onnx(maxtext_image, env):
    found = python_in(maxtext_image, MAXTEXT_CHECK, env)
    assert found.pop("python").startswith("3.12.")
    lock = (REPO / "envs/maxtext.lock.txt").read_text()
    for name, version in found.items():
        assert f"\n{name}=={version} " in lock, (name, version)


def maxtext_steps() -> list[list[str]]:
    """The commands the rules run for the tiny MaxText target (workflow/rules/*.smk), with the
    parameters they take from config.yaml; relative to /work, as in the image's WORKDIR."""
    config = validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    model = model_entry(config, MAXTEXT_MODEL)
    entry = checkpoint_entry(config, MAXTEXT_MODEL, CHECKPOINT)
    variant = variant_entry(config, VARIANT)
    settings = parity_settings(config, MAXTEXT_MODEL, CHECKPOINT, VARIANT)
    root = f"results/{MAXTEXT_MODEL}/{CHECKPOINT}"
    target = f"{MAXTEXT_MODEL}/{CHECKPOINT}/{VARIANT}"
    family = ["--family", model["family"]]
    return [
        ["download", "--source", entry["source"], "--out", f"{root}/download"],
        ["stage", *family, "--checkpoint", f"{root}/download/.",
         "--options", json.dumps(model.get("options", {})), "--out", f"{root}/stage"],
        ["export", *family, "--stage", f"{root}/stage", "--dtype", variant["dtype"],
         "--opset", str(variant["opset"]), "--out", f"{root}/export/{VARIANT}"],
        ["parity", *family, "--target", target, "--checkpoint", f"{root}/download",
         "--stage", f"{root}/stage", "--export", f"{root}/export/{VARIANT}",
         "--settings", json.dumps(settings), "--out", f"{root}/parity/{VARIANT}"],
        ["gate", "--report", f"{root}/parity/{VARIANT}/report.json",
         "--release", f"results/release/{target}", "--out", f"{root}/parity/{VARIANT}.passed.json"],
        ["promote", "--target", target, "--download", f"{root}/download",
         "--stage", f"{root}/stage", "--export", f"{root}/export/{VARIANT}",
         "--parity", f"{root}/parity/{VARIANT}",
         "--passed", f"{root}/parity/{VARIANT}.passed.json", "--out", f"results/release/{target}"],
    ]  # fmt: skip


def test_tiny_maxtext_model_passes_its_gate_in_the_maxtext_image(maxtext_image, env, tmp_path):
    """The maxtext image has no Snakemake: each step runs as its rule would run it."""
    uid, gid, flags = _run_as(env)
    results = tmp_path / "results"
    results.mkdir()
    if os.getuid() == 0:
        os.chown(results, uid, gid)
    for step in maxtext_steps():
        run = podman(
            "run", "--rm", "-v", f"{results}:/work/results", *flags,
            "--entrypoint", "python", maxtext_image, "-m", "onnxforge", *step,
            env=env, timeout=1800,
        )  # fmt: skip
        assert run.returncode == 0, f"{step[0]}: {(run.stdout + run.stderr)[-4000:]}"
    root = results / MAXTEXT_MODEL / CHECKPOINT
    report = json.loads((root / f"parity/{VARIANT}/report.json").read_text())
    assert report["status"] == "PASS", report["failures"]
    release = json.loads(
        (results / f"release/{MAXTEXT_MODEL}/{CHECKPOINT}/{VARIANT}/manifest.json").read_text()
    )
    assert release["status"] == "PASS"
    assert release["environment"]["image"] == "maxtext"
    assert release["environment"]["lock"] == "maxtext.lock.txt"
    lock_sha = hashlib.sha256((REPO / "envs/maxtext.lock.txt").read_bytes()).hexdigest()
    assert release["environment"]["lock_sha256"] == lock_sha
    assert release["environment"]["python"].startswith("3.12.")
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in results.rglob("*")}
    assert owners == {(uid, gid)}, f"files on the host owned by {owners}, expected {uid}:{gid}"
