"""`onnxforge build SOURCE...` with no config file, through the real DAG in one Snakemake call:
a local tiny checkpoint of each family (the MaxText one Llama 3.2-shaped: tied embeddings, RoPE
factor 32), a loopback-hub repo, a folder whose config.json does not match its weights, and a
Mistral-Nemo-shaped Mistral (head_dim apart from hidden / heads), refused at stage naming it.
Each is named from its source and gets the verdict it earned; the exit status is 0 only if
every gate held; each step's log has its phases' lines and the driver's console (here a file)
the bars."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from hub_server import HubServer
from onnxforge.core import progress
from onnxforge.driver import recognize
from onnxforge.driver.build import CATALOG_ENTRY
from onnxforge.families import FAMILIES

pytestmark = [pytest.mark.dag, pytest.mark.maxtext]
HUB_REPO = "acme/tiny-gpt-oss"
COMMIT = hashlib.sha1(b"tiny-gpt-oss").hexdigest()


def test_build_sources_without_a_config_file(tmp_path, monkeypatch):
    folders = ("gpt-oss-ft", "llama32-ft", "broken", "nemo-ft")
    gpt_oss, llama, broken, nemo = (tmp_path / n for n in folders)
    FAMILIES["gpt_oss"].synthesize(gpt_oss, seed=1, overrides={})
    FAMILIES["maxtext"].synthesize(
        llama, seed=1, overrides={"arch": "llama3.1", "variant": "llama3.2"}
    )
    FAMILIES["maxtext"].synthesize(nemo, seed=1, overrides={"arch": "mistral", "head_dim": 32})
    FAMILIES["gpt_oss"].synthesize(broken, seed=1, overrides={})
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    hub = tmp_path / "hub"
    FAMILIES["gpt_oss"].synthesize(hub, seed=2, overrides={})
    files = {p.name: p.read_bytes() for p in hub.iterdir()}
    files["pytorch_model.bin"] = b"another format of the weights: never fetched"

    workdir = tmp_path / "work"
    workdir.mkdir()
    console = tmp_path / "console"
    console.touch()
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        progress.CONSOLE_ENV: f"{socket.gethostname()}:{console}",
    }
    env.pop("HF_TOKEN", None)
    hub_source = f"hf://{HUB_REPO}@main"
    sources = [str(gpt_oss), str(llama), hub_source, f"file://{broken}", str(nemo)]
    with HubServer({HUB_REPO: {COMMIT: files}}, {HUB_REPO: {"main": COMMIT}}) as server:
        env["HF_ENDPOINT"] = server.url
        run = subprocess.run(
            [sys.executable, "-m", "onnxforge", "build", *sources, "--variant", "f32",
             "--cores", "2", "--",
             "--set-threads", "stage=1", "export=1", "parity_report=1"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=2400, check=False,
        )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode != 0, "a target whose stage failed left the exit status 0"

    names = {source: "/".join(recognize.results_names(source)) for source in sources}
    assert names[hub_source] == "acme--tiny-gpt-oss/main"
    families = ("gpt_oss", "maxtext", "gpt_oss", "gpt_oss", "maxtext")
    for source, family in zip(sources, families, strict=True):
        assert f"{source}: model_type" in out and f"family {family}" in out
        assert f"results name {names[source]}" in out
    verdicts = out[out.index("onnxforge build: 5 target(s)") :]
    for source in sources[:3]:
        target = f"{names[source]}/f32"
        assert f"PASS       {target}" in verdicts, out[-6000:]
        assert f"release: results/release/{target}" in verdicts
        model, checkpoint = names[source].split("/")
        report = workdir / "results" / model / checkpoint / "parity/f32/report.json"
        assert json.loads(report.read_text())["status"] == "PASS"
        assert f"report:  {report.relative_to(workdir).with_suffix('.md')}" in verdicts
        assert (workdir / "results/release" / target / "model.onnx").is_file()
        assert (workdir / "results" / model / CATALOG_ENTRY).is_file()
    broken_target = f"{names[sources[3]]}/f32"
    assert f"NOT BUILT  {broken_target}  the stage step failed" in verdicts
    assert f"NOT BUILT  {names[sources[4]]}/f32  the stage step failed" in verdicts
    # the verdict carries the step's one line
    nemo_verdict = next(line for line in verdicts.splitlines() if names[sources[4]] in line)
    assert "cannot honor head_dim 32: MaxText's converter for mistral-7b" in nemo_verdict

    hub_root = workdir / "results/acme--tiny-gpt-oss/main"
    download = json.loads((hub_root / "download/manifest.json").read_text())
    assert download["revision"] == COMMIT and "pytorch_model.bin" not in download["outputs"]
    logs = hub_root / "logs"
    fetched = len(files) - 1  # all but pytorch_model.bin
    assert f"[download] fetch: {fetched} of {fetched} files" in (logs / "download.log").read_text()
    assert "[stage] tensors: " in (logs / "stage.log").read_text()
    export_log = (logs / "export-f32.log").read_text()
    for phase in ("load", "trace and convert (jax2onnx)", "save (", "check (onnx.checker)"):
        assert f"[export] {phase}" in export_log
    parity_log = (logs / "parity-f32.log").read_text()
    assert "[parity] reference (transformers) forward: " in parity_log
    llama_stage = (workdir / "results" / names[str(llama)] / "logs/stage.log").read_text()
    assert "[stage] save (Orbax): " in llama_stage
    shown = console.read_text()
    assert "stage " in shown and "export " in shown and "parity " in shown
