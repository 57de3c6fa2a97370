"""`onnxforge build SOURCE` without the DAG (but for one test that reads the registry build's
downloads): which family and options a checkpoint's config.json
gets (through each family's ``recognize``), the one-line refusals, the results/ names, a hub
repo's config.json fetched alone, and the steps' progress lines."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from hub_server import HubServer
from onnxforge.core import progress
from onnxforge.core.errors import InputError
from onnxforge.driver import build, recognize
from onnxforge.families import FAMILIES
from registry import example_params, target

COMMIT = hashlib.sha1(b"tiny").hexdigest()


@pytest.mark.dag
@pytest.mark.parametrize(("family", "example"), example_params())
def test_every_example_is_recognized_as_its_catalog_entry(family, example, registry_build):
    """The registry's tiny checkpoints, as transformers wrote them (the registry build's
    downloads), come back as the family and options the catalog gives them (their own
    family's, which --family chooses where another would build them too): a new
    architecture's table entry is checked here."""
    download = registry_build / target(example).download
    config = json.loads((download / "config.json").read_text())
    chosen, _, also = recognize.detect(config, "config.json", None, {})
    assert family.name in (chosen, *also)  # where two families build it, --family picks
    assert recognize.detect(config, "config.json", family.name, {})[:2] == (
        family.name,
        example.options,
    )


def _folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_unsupported_model_type_is_one_line_naming_what_is_supported(
    tmp_path, monkeypatch, capsys
):
    folder = _folder(tmp_path, {"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    monkeypatch.chdir(tmp_path)
    assert build.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{folder}/config.json" in err and "'bert' (BertForMaskedLM)" in err
    for supported in (
        "gpt_oss",
        "llama",
        "mistral",
        "mixtral",
        "gemma",
        "--family",
        "--maxtext-model",
    ):
        assert supported in err
    assert not (tmp_path / "results").exists()


def test_a_forced_family_that_does_not_read_it_is_refused():
    with pytest.raises(InputError, match="the gpt_oss family does not build model_type 'llama'"):
        recognize.detect({"model_type": "llama"}, "c.json", "gpt_oss", {})


def test_gpt_oss_goes_to_its_own_family_and_maxtext_when_forced():
    config = {"model_type": "gpt_oss", "rope_scaling": {"rope_type": "yarn", "factor": 32.0}}
    assert recognize.detect(config, "c.json", None, {}) == ("gpt_oss", {}, ("maxtext",))
    assert recognize.detect(config, "c.json", "maxtext", {}) == (
        "maxtext",
        {"model": "gpt-oss-20b"},
        (),
    )


def test_llama_rope_scaling_tells_llama2_from_llama3():
    """Llama 2 and Llama 3 share model_type "llama"; MaxText's llama2-7b has plain RoPE,
    llama3.1-8b the "llama3" scaling; a scaling neither has is refused, naming both."""
    config = {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert recognize.detect(config, "c.json", None, {})[:2] == ("maxtext", {"model": "llama3.1-8b"})
    assert recognize.detect({"model_type": "llama"}, "c.json", None, {})[:2] == (
        "maxtext",
        {"model": "llama2-7b"},
    )
    linear = {"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    with pytest.raises(InputError, match=r"rope_type 'linear'.*llama2-7b.*llama3.1-8b"):
        recognize.detect(linear, "c.json", None, {})
    forced = recognize.detect(linear, "c.json", "maxtext", {"model": "llama3.1-8b"})
    assert forced == ("maxtext", {"model": "llama3.1-8b"}, ())


def test_maxtext_model_implies_the_maxtext_family(tmp_path):
    folder = _folder(tmp_path, {"model_type": "mistral"})
    found = recognize.recognize(str(folder), maxtext_model="mistral-7b")
    assert (found.family, found.options) == ("maxtext", {"model": "mistral-7b"})
    with pytest.raises(InputError, match="--maxtext-model mistral-7b is for --family maxtext"):
        recognize.recognize(str(folder), family="gpt_oss", maxtext_model="mistral-7b")


def test_two_families_recognizing_one_model_type_prefer_the_registry_order(monkeypatch):
    class General:
        name, model_types = "general", ("gpt_oss",)

        def recognize(self, hf_config, source, forced):
            return {"model": "gpt-oss-20b"}

    monkeypatch.setitem(FAMILIES, "general", General())
    assert recognize.detect({"model_type": "gpt_oss"}, "c.json", None, {}) == (
        "gpt_oss",
        {},
        ("general",),
    )
    assert recognize.detect({"model_type": "gpt_oss"}, "c.json", "general", {})[0] == "general"


def test_results_names_are_stable_and_filesystem_safe(tmp_path, monkeypatch):
    assert recognize.results_names("hf://acme/Tiny.Model_2@v1.0") == ("acme--Tiny.Model_2", "v1.0")
    assert recognize.results_names("hf://acme/tiny") == ("acme--tiny", "main")
    _, checkpoint = recognize.results_names("hf://acme/tiny@refs/pr/1")
    assert checkpoint.startswith("refs-pr-1-") and checkpoint == recognize.safe_name("refs/pr/1")

    hostile = tmp_path / "my ckpt $(touch x)"
    hostile.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / hostile.name).mkdir()
    monkeypatch.chdir(tmp_path)
    name, checkpoint = recognize.results_names(f"./{hostile.name}")
    assert checkpoint == "local"
    assert recognize.safe_name(name) == name and name.startswith("my-ckpt-touch-x-")
    # However it is written, one folder has one name; another folder of that name, another.
    assert recognize.results_names(f"file://{hostile}")[0] == name
    assert recognize.results_names(str(hostile) + "/")[0] == name
    assert recognize.results_names(str(tmp_path / "other" / hostile.name))[0] != name
    # A folder name longer than a results name may be (the file system's limit is 255): cut,
    # the hash of its path kept.
    long = tmp_path / ("f" * 250)
    long.mkdir()
    name, _ = recognize.results_names(str(long))
    assert len(name) == recognize.NAME_MAX and name.startswith("fff") and name[-9] == "-"


def test_name_overrides_the_derived_one_and_is_checked(tmp_path):
    folder = _folder(tmp_path, {"model_type": "gpt_oss"})
    assert recognize.recognize(str(folder), name="my-gpt").model == "my-gpt"
    for bad in ("release", "a/b", "-x"):
        with pytest.raises(InputError, match="--name"):
            recognize.recognize(str(folder), name=bad)


def test_hub_source_fetches_config_json_alone_and_gets_a_catalog_entry(tmp_path, monkeypatch):
    config = {"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"]}
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": b"x" * 1000}
    server = HubServer({"acme/tiny": {COMMIT: files}}, {"acme/tiny": {"main": COMMIT}})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        found = recognize.recognize("hf://acme/tiny@main")
        with pytest.raises(InputError, match="repository 'acme/missing' not found"):
            recognize.recognize("hf://acme/missing")
    assert (found.family, found.model, found.checkpoint) == ("gpt_oss", "acme--tiny", "main")
    assert found.catalog()["models"]["acme--tiny"]["checkpoints"]["main"] == {
        "source": "hf://acme/tiny@main",
        "exclude": recognize.HUB_EXCLUDE,
    }
    fetched = [r.path for r in server.requests if "/resolve/" in r.path]
    assert fetched and all(p.endswith("/config.json") for p in fetched)


def test_hub_repo_without_config_json_is_one_line(tmp_path, monkeypatch):
    server = HubServer({"acme/weights": {COMMIT: {"model.safetensors": b"x"}}})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with server, pytest.raises(InputError, match=r"the repo has no config\.json"):
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        recognize.recognize(f"hf://acme/weights@{COMMIT}")


def test_neither_catalog_model_nor_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert build.main(["no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-model' is neither a catalog model nor a checkpoint folder" in err


def test_phase_lines_go_to_the_log_and_bars_to_the_drivers_console(tmp_path, monkeypatch, capsys):
    console = tmp_path / "console"
    console.touch()
    monkeypatch.setenv(progress.CONSOLE_ENV, f"{socket.gethostname()}:{console}")
    progress.begin("stage", "tiny/hf")
    with progress.phase("tensors", 300, items=3, item="tensors") as tensors:
        for _ in range(3):
            tensors.advance(100, items=1)
    saved = tmp_path / "saved"
    with progress.phase("save", 10, watch=saved):
        saved.write_bytes(b"x" * 10)
    with pytest.raises(RuntimeError), progress.phase("trace"):
        raise RuntimeError("no line for a phase that failed")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        "[stage] tensors: 3 of 3 tensors",
        "[stage] save: 10 B of 10 B",
    ]
    assert "stage tiny/hf: tensors" in console.read_text()

    console.write_text("")  # the driver on another host: no bars here
    monkeypatch.setenv(progress.CONSOLE_ENV, f"not-{socket.gethostname()}:{console}")
    with progress.phase("trace"):
        pass
    assert console.read_text() == ""
    assert capsys.readouterr().err.startswith("[stage] trace: ")


def test_a_failed_steps_verdict_carries_its_one_line(tmp_path):
    """NOT BUILT names why, from the step's log (its last ``onnxforge STEP: error:`` line);
    a log without one (a crash) is pointed at instead."""
    log = tmp_path / "export-f32-kv.log"
    log.write_text(
        "[export] load: 1.0 s\n"
        "onnxforge export: error: stage: no KV-cache decoder for MaxText's deepseek2-16b: why\n"
    )
    assert build.error_line(log) == "stage: no KV-cache decoder for MaxText's deepseek2-16b: why"
    log.write_text("Traceback (most recent call last):\n  ...\nValueError: boom\n")
    assert build.error_line(log) == ""
