"""No config value is ever run as shell: every one reaches the rules' shells shlex-quoted.

A checkpoint folder whose name is a command substitution builds and passes like any other;
hostile include/exclude/extra/options/subdir values fail their target without running.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import snakemake
from onnxforge.families.base import Example
from registry import target

pytestmark = pytest.mark.dag


def test_hostile_values_never_run(tiny_checkpoint, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    pwned = workdir / "PWNED"
    hostile = f"'$(touch {pwned})'`touch {pwned}`;touch {pwned}"
    checkpoint = tmp_path / f"ckpt{hostile.replace('/', '_')}"
    shutil.copytree(tiny_checkpoint, checkpoint)
    config = {
        "models": {
            "quoted": {
                "family": "gpt_oss",
                "options": {"note": hostile},
                "checkpoints": {"hf": {"source": f"file://{checkpoint}"}},
            },
            "hostile": {
                "family": "gpt_oss",
                "options": {"note": hostile},
                "checkpoints": {
                    "hf": {
                        "source": f"file://{tmp_path}/missing{hostile}",
                        "include": [hostile],
                        "exclude": [hostile],
                        "extra": {"flax": f"file:///x{hostile}"},
                    },
                    "sub": {"source": f"file://{checkpoint}", "subdir": f".{hostile}"},
                },
            },
        },
        "targets": [
            {"model": m, "checkpoint": c, "variant": "f32"}
            for m, c in (("quoted", "hf"), ("hostile", "hf"), ("hostile", "sub"))
        ],
    }
    run = snakemake(workdir, "--keep-going", config=config)
    assert not pwned.exists(), "a config value ran as a shell command"
    assert run.returncode != 0  # the hostile targets fail ...
    quoted = target(Example("quoted", ""))
    assert (workdir / quoted.release / "model.onnx").exists()  # ... the quoted one passes
    for checkpoint_name in ("hf", "sub"):
        assert not (workdir / f"results/release/hostile/{checkpoint_name}").exists()
