"""A hub checkpoint by name through the whole DAG: hf:// pinned to a commit, OpenAI's original/
layout staged and cut to two layers, checked against transformers on the top-level files."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import snakemake
from hub_server import HubServer
from onnxforge.families.gpt_oss import FAMILY

pytestmark = pytest.mark.dag
REPO = "acme/gpt-oss-tiny"
COMMIT = hashlib.sha1(b"release").hexdigest()


def test_hub_checkpoint_original_layout_truncated(tmp_path, monkeypatch):
    FAMILY.synthesize(
        tmp_path / "repo", seed=5, overrides={"original": True, "num_hidden_layers": 3}
    )
    files = {
        str(p.relative_to(tmp_path / "repo")): p.read_bytes()
        for p in (tmp_path / "repo").rglob("*")
        if p.is_file()
    }
    files["metal/model.bin"] = b"not for us"
    server = HubServer({REPO: {COMMIT: files}}, {REPO: {"main": COMMIT}})
    config = {
        "models": {
            "tiny-hub": {
                "family": "gpt_oss",
                "checkpoints": {
                    "original-2layers": {
                        "source": f"hf://{REPO}@main",
                        "exclude": ["metal/*"],
                        "subdir": "original",
                        "layers": 2,
                    }
                },
            }
        },
        "targets": [{"model": "tiny-hub", "checkpoint": "original-2layers", "variant": "f32"}],
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        run = snakemake(workdir, config=config)
    assert run.returncode == 0, run.stderr[-3000:]

    root = workdir / "results/tiny-hub/original-2layers"
    download = json.loads((root / "download/manifest.json").read_text())
    assert download["revision"] == COMMIT and download["requested_revision"] == "main"
    assert "metal/model.bin" not in download["outputs"]
    assert "original/model.safetensors" in download["outputs"]
    stage = json.loads((root / "stage/config.json").read_text())
    assert stage["num_hidden_layers"] == 2
    report = json.loads((root / "parity/f32/report.json").read_text())
    assert report["status"] == "PASS", report["failures"]
    release = json.loads(
        (workdir / "results/release/tiny-hub/original-2layers/f32/manifest.json").read_text()
    )
    assert release["revision"] == COMMIT and release["source"] == f"hf://{REPO}@main"
