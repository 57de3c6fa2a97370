"""The CPU image: builds, runs the tiny model as the caller, and carries nothing of the host's.

Builds ``onnxforge-cpu:<lock sha256[:12]>`` with containers/build.sh every time: the engine's
layer cache makes that quick when only the workflow changed, and the image never runs stale code.
Needs podman (``make system-deps``); without it these tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.container
BUILD = REPO / "containers" / "build.sh"
REPORT = Path("tiny-gpt-oss/hf/parity/f32/report.json")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Rootful podman's default ulimits can exceed this host's hard limits (runc then fails with
    # "error setting rlimit"); build.sh writes a containers.conf within them when needed.
    conf = subprocess.run(
        [str(BUILD), "podman-conf"], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    if conf:
        env["CONTAINERS_CONF"] = conf
    return env


def podman(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `make system-deps` (podman, runc, mmdebstrap)")
    return _env()


@pytest.fixture(scope="module")
def image(env) -> str:
    lock_sha = hashlib.sha256((REPO / "envs/jax.lock.txt").read_bytes()).hexdigest()
    tag = f"localhost/onnxforge-cpu:{lock_sha[:12]}"
    build = subprocess.run(
        [str(BUILD), "cpu", "--engine", "podman"],
        capture_output=True, text=True, timeout=3600, env=env, check=False,
    )  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    inspect = podman("image", "inspect", tag, env=env)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["Labels"]["io.onnxforge.lock.sha256"] == lock_sha
    return tag


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


def test_tiny_model_builds_in_the_container_as_the_caller(image, env, tmp_path):
    uid, gid, flags = _run_as(env)
    results = tmp_path / "results"
    results.mkdir()
    if os.getuid() == 0:
        os.chown(results, uid, gid)
    run = podman(
        "run", "--rm", "-v", f"{results}:/work/results", *flags, image, "tiny-gpt-oss",
        env=env, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    report = json.loads((results / REPORT).read_text())
    assert report["status"] == "PASS"
    assert (results / REPORT.parent.parent / "f32.passed.json").exists()
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in results.rglob("*")}
    assert owners == {(uid, gid)}, f"files on the host owned by {owners}, expected {uid}:{gid}"
    assert not list(results.rglob("*.tmp-*"))


def test_help_lists_the_catalog(image, env):
    run = podman("run", "--rm", image, "--help", env=env)
    assert run.returncode == 0, run.stderr
    assert "tiny-gpt-oss" in run.stdout


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
