"""The MaxText survey's logic, in the jax environment (no MaxText model runs here): a config's
tiny overrides, failures as one-line errors, parity against the gates, the worker subprocess
with its timeout, the report, and the gates coming from config.yaml."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from onnxforge.survey import driver, report, settings, worker
from onnxforge.survey.failures import (
    ERROR_CHARS,
    Recorded,
    export_error,
    parity_error,
    process_error,
    short_error,
)
from onnxforge.survey.tiny import SHRINK, TINY, random_params, tiny_overrides

CONFIG_GATES = yaml.safe_load((REPO / "config.yaml").read_text())["gates"]["float32"]
# What base.yml knows, for these tests: every key tiny_overrides may set.
BASE_KEYS = (
    set(TINY)
    | set(SHRINK)
    | {
        "num_experts",
        "num_experts_per_tok",
        "n_routing_groups",
        "topk_routing_group",
        "first_num_dense_layers",
        "mrope_section",
        "num_kv_shared_layers",
    }
)


# ---- tiny overrides ---------------------------------------------------------------------------


def test_a_dense_grouped_query_config_becomes_tiny_and_stays_grouped():
    llama = {"base_emb_dim": 4096, "base_num_query_heads": 32, "base_num_kv_heads": 8}
    assert tiny_overrides(llama, BASE_KEYS) == {**TINY, "base_num_kv_heads": 2}
    multi_head = {"base_num_query_heads": 16, "base_num_kv_heads": 16}
    assert tiny_overrides(multi_head, BASE_KEYS) == TINY


def test_only_keys_base_yml_knows_are_passed():
    out = tiny_overrides({"num_experts": 8, "sliding_window_size": 4096}, {"vocab_size", "x"})
    assert out == {"vocab_size": 256}


def test_moe_with_a_dense_prefix_and_routing_groups():
    deepseek = {
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "n_routing_groups": 8,
        "first_num_dense_layers": 3,
        "q_lora_rank": 1536,
        "base_num_query_heads": 128,
        "base_num_kv_heads": 128,
    }
    out = tiny_overrides(deepseek, BASE_KEYS)
    assert out["num_experts"] == 4 and out["num_experts_per_tok"] == 2
    assert out["n_routing_groups"] == 2 and out["topk_routing_group"] == 1
    assert out["first_num_dense_layers"] == 1
    assert out["base_num_decoder_layers"] == 3  # one dense layer, then a cycle of two
    assert out["q_lora_rank"] == 8 and out["base_num_kv_heads"] == 4
    assert out["base_mlp_dim"] == 128  # not fully MoE: the dense layer keeps its MLP


def test_fully_moe_models_get_base_mlp_dim_of_the_experts():
    mixtral = {"num_experts": 8, "num_experts_per_tok": 2}
    out = tiny_overrides(mixtral, BASE_KEYS)
    assert out["base_mlp_dim"] == TINY["base_moe_mlp_dim"] == 64
    assert "n_routing_groups" not in out and "first_num_dense_layers" not in out
    assert tiny_overrides({**mixtral, "decoder_block": "gemma4"}, BASE_KEYS)["base_mlp_dim"] == 128
    interleaved = tiny_overrides({**mixtral, "interleave_moe_layer_step": 2}, BASE_KEYS)
    assert interleaved["base_mlp_dim"] == 128 and interleaved["base_num_decoder_layers"] == 2
    assert (
        tiny_overrides({"num_experts": 2, "num_experts_per_tok": 8}, BASE_KEYS)[
            "num_experts_per_tok"
        ]
        == 2
    )
    assert tiny_overrides({"num_experts": 1}, BASE_KEYS) == TINY


@pytest.mark.parametrize(
    ("model_yaml", "layers"),
    [
        ({}, 2),
        ({"inhomogeneous_layer_cycle_interval": 6}, 6),
        ({"interleave_moe_layer_step": 2, "nope_layer_interval": 4}, 4),
        ({"inhomogeneous_layer_cycle_interval": 4, "interleave_moe_layer_step": 6}, 12),
        ({"interleave_moe_layer_step": 2, "nope_layer_interval": 3}, 6),
        ({"inhomogeneous_layer_cycle_interval": 3, "first_num_hash_layers": 2}, 5),
        ({"nope_layer_interval": 1, "first_num_dense_layers": 0}, 2),
    ],
)
def test_the_layer_count_is_a_whole_layer_cycle_after_the_prefix(model_yaml, layers):
    assert tiny_overrides(model_yaml, BASE_KEYS)["base_num_decoder_layers"] == layers


def test_size_fields_are_shrunk_only_where_the_config_sets_them():
    out = tiny_overrides(
        {
            "sliding_window_size": 4096,
            "global_head_dim": 16,  # already smaller than 32: kept
            "indexer_topk": True,  # a bool is no size
            "o_lora_rank": 0,
        },
        BASE_KEYS,
    )
    assert out["sliding_window_size"] == 8 and out["global_head_dim"] == 16
    assert "indexer_topk" not in out and "o_lora_rank" not in out
    assert "gdn_chunk_size" not in out


def test_multimodal_rope_sections_keep_the_config_ratios():
    out = tiny_overrides({"use_mrope": True}, BASE_KEYS)  # MaxText's default [24, 20, 20]
    assert out["head_dim"] == 16 and out["mrope_section"] == "[4,2,2]"
    partial = tiny_overrides({"use_mrope": True, "partial_rotary_factor": 0.25}, BASE_KEYS)
    assert partial["head_dim"] == 32 and partial["mrope_section"] == "[2,1,1]"
    assert "mrope_section" not in tiny_overrides({"mrope_section": [0, 0]}, BASE_KEYS)


def test_kv_shared_layers_are_at_most_half_the_layers():
    out = tiny_overrides({"num_kv_shared_layers": 20, "nope_layer_interval": 4}, BASE_KEYS)
    assert out["base_num_decoder_layers"] == 4 and out["num_kv_shared_layers"] == 2


def test_random_params_are_seeded_with_norm_scales_near_one():
    shapes = {
        ("decoder", "layer_0", "pre_norm", "scale"): (64,),
        ("decoder", "wq", "kernel"): (64, 32),
    }
    params = random_params(shapes)
    again = random_params(shapes)
    scale, kernel = (
        params[("decoder", "layer_0", "pre_norm", "scale")],
        params[("decoder", "wq", "kernel")],
    )
    assert scale.dtype == kernel.dtype == np.float32 and kernel.shape == (64, 32)
    assert abs(scale.mean() - 1.0) < 0.02 and abs(kernel.mean()) < 0.01
    assert 0.04 < kernel.std() < 0.06 and 0.03 < scale.std() < 0.07
    assert all(np.array_equal(params[k], again[k]) for k in shapes)
    assert not np.array_equal(random_params(shapes, seed=1)[("decoder", "wq", "kernel")], kernel)


# ---- failures -------------------------------------------------------------------------------


def test_short_error_is_one_line_without_temporary_paths():
    assert short_error(ValueError("bad\n   value")) == "ValueError: bad value"
    assert short_error(KeyError()) == "KeyError"
    ort = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/survey-x1/model.onnx failed:"
        "Node (Gather_7) in /tmp/maxtext-survey-a/survey-b/model.onnx: rank >= 1"
    )
    assert short_error(ort) == (
        "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : Node (Gather_7) in model.onnx: rank >= 1"
    )
    long = short_error(TypeError("x" * 500))
    assert len(long) == ERROR_CHARS and long.startswith("TypeError: xxx") and long.endswith("…")
    assert short_error(Recorded("r" * 500)) == "r" * ERROR_CHARS  # already a row's line


def test_export_error_names_the_fixed_shape_failure():
    symbolic = "AttributeError: no attribute 'rmax'"
    assert export_error(symbolic, symbolic) == symbolic + " (fixed shape too)"
    assert export_error(symbolic, "TypeError: concat") == symbolic + " (fixed shape: TypeError)"
    long = short_error(ValueError("y" * 500))
    line = export_error(long, "TypeError: z")
    assert len(line) == ERROR_CHARS and line.endswith("…" + " (fixed shape: TypeError)")


def test_parity_error_names_each_failed_gate_once():
    failures = ["max_abs = 0.002, gate requires <= 0.001", "kl_max = 1, gate requires <= 0.0001"]
    assert parity_error(failures + failures[:1]) == "parity: " + "; ".join(failures)
    assert len(parity_error(["z" * 300])) == ERROR_CHARS


def test_process_error_tells_a_timeout_from_a_crash():
    assert process_error(None, 300.0, "export", "") == (
        "Timeout: no result after 300 s (in stage export)"
    )
    assert process_error(-11, 300.0, "forward", "Segmentation fault") == (
        "process exited with -11 in stage forward: Segmentation fault"
    )
    assert len(process_error(1, 1.0, "params", "w" * 300)) == ERROR_CHARS


# ---- parity and the gates ---------------------------------------------------------------------


def logits(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 16, 256)).astype(np.float32)


def test_parity_passes_identical_logits_and_fails_beyond_the_gate():
    two, one = logits(2, 0), logits(1, 1)
    metrics, error = worker.judge_parity([(two, two.copy()), (one, one.copy())], CONFIG_GATES)
    assert error is None
    assert metrics == {
        "max_abs": 0.0,
        "kl_max": pytest.approx(0.0, abs=1e-12),
        "top1_agreement": 1.0,
    }
    off = one + np.float32(2e-3)
    metrics, error = worker.judge_parity([(two, two), (one, off)], CONFIG_GATES)
    assert metrics["max_abs"] == pytest.approx(2e-3, rel=1e-3)  # the worse of the two inputs
    assert error == "parity: max_abs = 0.002, gate requires <= 0.001"
    # The gates are what is passed: a looser max_abs lets the same logits through.
    assert worker.judge_parity([(one, off)], {**CONFIG_GATES, "max_abs": 1e-2})[1] is None


def test_the_gates_are_config_yamls_float32_gates(tmp_path):
    assert settings.CONFIG_YAML == REPO / "config.yaml"
    assert settings.float32_gates() == CONFIG_GATES
    assert CONFIG_GATES == {"max_abs": 1e-3, "kl_max": 1e-4}
    other = tmp_path / "config.yaml"
    other.write_text(yaml.safe_dump({"gates": {"float32": {"max_abs": 0.5, "top1_min": 0.9}}}))
    assert settings.float32_gates(other) == {"max_abs": 0.5, "top1_min": 0.9}
    other.write_text(yaml.safe_dump({"gates": {"float32": {"max_rel": 0.5}}}))
    with pytest.raises(ValueError, match="unknown gates"):
        settings.float32_gates(other)


OTHER_GATES = {"max_abs": 0.125, "kl_max": 0.5, "top1_min": 0.75}


@pytest.fixture
def other_config(monkeypatch, tmp_path) -> Path:
    """A config.yaml with other float32 gates than the project's, where the survey reads it."""
    path = tmp_path / "config.yaml"
    gates = {"float32": OTHER_GATES, "bfloat16": {"kl_max": 1.0}}
    path.write_text(yaml.safe_dump({"gates": gates}, sort_keys=False))
    monkeypatch.setattr(settings, "CONFIG_YAML", path)
    return path


def test_the_worker_is_handed_the_config_gates_or_those_of_gates(
    other_config, monkeypatch, tmp_path
):
    handed = []
    monkeypatch.setattr(worker, "run_worker", lambda name, result, gates: handed.append(gates))
    assert driver.main(["--worker", "gemma-2b", "--result", str(tmp_path / "r.json")]) == 0
    assert driver.main(["--worker", "gemma-2b", "--gates", '{"kl_max": 0.25}']) == 0
    assert handed == [OTHER_GATES, {"kl_max": 0.25}]
    command = driver.worker_command("gemma-2b", tmp_path / "r.json", CONFIG_GATES)
    assert command[1:3] == ["-m", "onnxforge.survey"]
    assert json.loads(command[command.index("--gates") + 1]) == CONFIG_GATES


@pytest.mark.parametrize("text", ["{", "[1]", '{"max_rel": 1}', '{"max_abs": "small"}', "{}"])
def test_bad_gates_are_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError):
        driver.parse_gates(text)
    with pytest.raises(SystemExit) as exit_:
        driver.main(["--worker", "x", "--gates", text])
    assert exit_.value.code == 2


# ---- the driver -----------------------------------------------------------------------------


def test_select_configs():
    names = ["gemma-2b", "gpt3-52k", "llama2-7b"]
    assert driver.select_configs(names, "") == names
    assert driver.select_configs(names, " llama2-7b.yml, gemma-2b,") == ["gemma-2b", "llama2-7b"]
    with pytest.raises(SystemExit, match=r"no such MaxText configs: \['nope'\]"):
        driver.select_configs(names, "gemma-2b,nope")


def fake_worker(tmp_path: Path, body: str) -> list[str]:
    """A worker command: python running ``body`` with ``result`` (the row's path) and ``row``."""
    script = tmp_path / "fake_worker.py"
    script.write_text(
        "import json, os, subprocess, sys, time\n"
        "result = sys.argv[1]\n"
        "def save(**row):\n"
        "    open(result, 'w').write(json.dumps({'config': 'm', 'instantiated': False,"
        " 'exported': False, 'parity': False, **row}))\n" + body
    )
    return [sys.executable, str(script), str(tmp_path / "m.json")]


def test_run_one_reads_the_row_the_worker_saved(tmp_path):
    body = (
        "assert os.environ['JAX_PLATFORMS'] == 'cpu'\n"
        "assert os.environ['TMPDIR'] == os.path.dirname(result)\n"
        "save(instantiated=True, exported=True, parity=True, stage='done')\n"
    )
    row = driver.run_one("m", 30, tmp_path, CONFIG_GATES, fake_worker(tmp_path, body))
    assert row["parity"] is True and row["stage"] == "done" and "error" not in row
    assert isinstance(row["seconds"], float) and row["seconds"] < 30


def test_run_one_records_a_crash_with_the_last_line_of_its_log(tmp_path):
    body = (
        "save(instantiated=True, stage='export')\nprint('first')\nprint('Killed')\nsys.exit(137)\n"
    )
    row = driver.run_one("m", 30, tmp_path, CONFIG_GATES, fake_worker(tmp_path, body))
    assert row["instantiated"] is True
    assert row["error"] == "process exited with 137 in stage export: Killed"
    # An error the worker recorded is kept; a worker with no row at all is a row still.
    body = "save(stage='forward', error='ValueError: x')\nsys.exit(1)\n"
    assert (
        driver.run_one("m", 30, tmp_path, CONFIG_GATES, fake_worker(tmp_path, body))["error"]
        == "ValueError: x"
    )
    (tmp_path / "m.json").unlink()
    row = driver.run_one("m", 30, tmp_path, CONFIG_GATES, fake_worker(tmp_path, "sys.exit(2)\n"))
    assert row["config"] == "m" and not row["instantiated"] and not row["parity"]
    assert row["error"] == "process exited with 2 in stage None: "


def test_run_one_kills_a_worker_and_its_children_at_the_timeout(tmp_path):
    body = (
        "save(instantiated=True, stage='export')\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(result + '.child', 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    row = driver.run_one("m", 1.5, tmp_path, CONFIG_GATES, fake_worker(tmp_path, body))
    assert time.monotonic() - start < 10
    assert row["error"] == "Timeout: no result after 1.5 s (in stage export)"
    assert row["instantiated"] is True and 1.5 <= row["seconds"] < 10
    child = int((tmp_path / "m.json.child").read_text())
    for _ in range(50):  # killed: gone, or a zombie nobody has reaped yet
        stat = Path(f"/proc/{child}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the worker's child outlived the timeout")


# ---- the report -----------------------------------------------------------------------------

ROWS = [
    {
        "config": "gemma-2b",
        "instantiated": True,
        "exported": True,
        "parity": True,
        "shape": "symbolic",
        "metrics": {"max_abs": 9.7e-8},
        "seconds": 28.0,
    },
    {
        "config": "llama4-17b-16e",
        "instantiated": True,
        "exported": True,
        "parity": False,
        "shape": "fixed shape",
        "metrics": {"max_abs": 0.0123},
        "seconds": 46.1,
        "error": "parity: a | b\nc",
    },
    {"config": "llama3-405b", "instantiated": False, "exported": False, "parity": False},
]
HEADER = {
    "date": "2026-11-23 19:11 UTC",
    "seconds": 2471.4,
    "jobs": 2,
    "timeout": 300.0,
    "versions": {"maxtext": "0.2.5", "jax": "0.11.1"},
    "config_dir": "/site-packages/maxtext/configs/models",
    "inference_settings": {"scan_layers": False, "attention": "dot_product"},
    "gates": {"max_abs": 0.5, "top1_min": 0.75},
}


def test_summary_counts():
    assert report.summary_counts(ROWS) == (
        "3 configs: 2 instantiated, 2 exported (1 only with a fixed shape), 1 parity passed"
    )
    assert report.summary_counts(ROWS[:1]) == (
        "1 configs: 1 instantiated, 1 exported, 1 parity passed"
    )
    assert report.summary_counts([]) == "0 configs: 0 instantiated, 0 exported, 0 parity passed"


def test_table_rows():
    assert [report.table_row(r) for r in ROWS] == [
        "| gemma-2b | yes | yes | yes | 9.7e-08 | 28.0 |  |",
        "| llama4-17b-16e | yes | yes (fixed shape) | no | 0.012 | 46.1 | parity: a \\| b c |",
        "| llama3-405b | no | no | no |  |  |  |",
    ]


def test_write_report(tmp_path):
    out = tmp_path / "results" / "maxtext-survey.md"
    report.write_report(ROWS, out, {**HEADER, "note": "rerun at 20:19"})
    lines = out.read_text().splitlines()
    assert lines[:5] == [
        "# MaxText model configs through onnxforge (tiny, random weights)",
        "",
        "**3 configs: 2 instantiated, 2 exported (1 only with a fixed shape), 1 parity passed**",
        "",
        "- Date: 2026-11-23 19:11 UTC; survey run time 2471 s (2 jobs, timeout 300 s per config)",
    ]
    assert lines[5:8] == [
        "- Note: rerun at 20:19",
        "- Versions: maxtext 0.2.5, jax 0.11.1",
        "- Config dir: `/site-packages/maxtext/configs/models`",
    ]
    assert lines[8] == (
        "- Settings: onnxforge's inference settings "
        '(`{"attention": "dot_product", "scan_layers": false}`), float32'
    )
    assert lines[10].endswith("(2, 16) and (1, 16), gates {'max_abs': 0.5, 'top1_min': 0.75}")
    assert lines[12:] == [
        "| config | instantiated | exported | parity passed | max_abs | seconds | first error |",
        "|---|---|---|---|---|---|---|",
        *map(report.table_row, ROWS),
    ]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"] == ROWS and saved["header"]["gates"] == HEADER["gates"]
    assert saved["counts"] == report.summary_counts(ROWS)
    report.write_report(ROWS, out, HEADER)
    assert not any(line.startswith("- Note") for line in out.read_text().splitlines())


def test_the_survey_reports_the_config_gates(other_config, monkeypatch, tmp_path):
    """main, with run_one faked: every config is run with config.yaml's gates, and the report's
    header records them."""
    models = tmp_path / "configs" / "models"
    models.mkdir(parents=True)
    for name in ("b-model", "a-model", "c-model"):
        (models / f"{name}.yml").write_text("base_emb_dim: 8\n")
    monkeypatch.setattr(driver, "installed_config_dir", lambda: tmp_path / "configs")
    calls = []

    def run_one(name, timeout, workdir, gates):
        calls.append((name, timeout, gates))
        done = name == "a-model"
        return {
            "config": name,
            "instantiated": done,
            "exported": done,
            "parity": done,
            "seconds": 1,
        }

    monkeypatch.setattr(driver, "run_one", run_one)
    out = tmp_path / "survey.md"
    assert driver.main(["--out", str(out), "--only", "c-model,a-model", "--timeout", "9"]) == 0
    assert calls == [("a-model", 9.0, OTHER_GATES), ("c-model", 9.0, OTHER_GATES)]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["header"]["gates"] == OTHER_GATES
    assert saved["header"]["config_dir"] == str(models) and saved["header"]["timeout"] == 9.0
    assert saved["header"]["inference_settings"]["max_target_length"] == 64
    assert saved["counts"] == "2 configs: 1 instantiated, 1 exported, 1 parity passed"
    assert [r["config"] for r in saved["rows"]] == ["a-model", "c-model"]
    assert f"gates {OTHER_GATES}" in out.read_text()
