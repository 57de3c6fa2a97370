"""Bad checkpoints give a clear error and leave no finished-looking stage output."""

from __future__ import annotations

import json
import shutil

import pytest

from bad_inputs import STAGE_CASES
from onnxforge.driver.cli import main


def _stage(checkpoint, out, capsys):
    code = main(
        ["stage", "--family", "gpt_oss", "--checkpoint", str(checkpoint), "--out", str(out)]
    )
    return code, capsys.readouterr().err


def _copy(checkpoint, tmp_path):
    broken = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, broken)
    return broken


def _assert_nothing_left(out):
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def test_good_checkpoint_stages_with_manifest(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "stage"
    code, err = _stage(tiny_checkpoint, out, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["checkpoint"]["model.safetensors"]
    assert any(name.startswith("params/") for name in manifest["outputs"])


def test_truncated_safetensors(tiny_checkpoint, tmp_path, capsys):
    broken = _copy(tiny_checkpoint, tmp_path)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = _stage(broken, tmp_path / "stage", capsys)
    assert code == 2
    assert "model.safetensors" in err and "truncated" in err
    _assert_nothing_left(tmp_path / "stage")


def _rewrite_without(checkpoint, drop=None, reshape=None):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][..., :-1].copy()
    save_file(tensors, str(checkpoint / "model.safetensors"))


def test_missing_tensor(tiny_checkpoint, tmp_path, capsys):
    broken = _copy(tiny_checkpoint, tmp_path)
    _rewrite_without(broken, drop="model.layers.1.self_attn.sinks")
    code, err = _stage(broken, tmp_path / "stage", capsys)
    assert code == 2
    assert "'model.layers.1.self_attn.sinks' is missing" in err
    _assert_nothing_left(tmp_path / "stage")


def test_wrong_shape(tiny_checkpoint, tmp_path, capsys):
    broken = _copy(tiny_checkpoint, tmp_path)
    _rewrite_without(broken, reshape="model.layers.0.self_attn.q_proj.weight")
    code, err = _stage(broken, tmp_path / "stage", capsys)
    assert code == 2
    assert "q_proj.weight" in err and "expects" in err and "config.json" in err
    _assert_nothing_left(tmp_path / "stage")


def test_config_that_is_not_gpt_oss(tiny_checkpoint, tmp_path, capsys):
    broken = _copy(tiny_checkpoint, tmp_path)
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    code, err = _stage(broken, tmp_path / "stage", capsys)
    assert code == 2
    assert "config.json: model_type is 'llama', not 'gpt_oss'" in err
    _assert_nothing_left(tmp_path / "stage")


def test_unknown_family(tiny_checkpoint, tmp_path, capsys):
    code = main(
        [
            "stage",
            "--family",
            "nope",
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2
    assert "unknown model family 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("case", STAGE_CASES, ids=lambda case: case.name)
def test_structurally_wrong_checkpoint_is_refused_at_stage(case, tiny_checkpoint, tmp_path, capsys):
    assert case.make(tiny_checkpoint, tmp_path / "checkpoint") is None
    code, err = _stage(tmp_path / "checkpoint", tmp_path / "stage", capsys)
    assert code == 2, err
    assert case.expected in err
    assert len(err.strip().splitlines()) == 1, err
    _assert_nothing_left(tmp_path / "stage")


def test_a_full_disk_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import errno

    from onnxforge.core import params_store

    def no_space(self, target, value):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(params_store.StreamingWriter, "_save", no_space)
    code, err = _stage(tiny_checkpoint, tmp_path / "stage", capsys)
    assert code == 2
    line = err.strip()
    assert len(line.splitlines()) == 1 and "No space left on device; free some space" in line
    assert str(tmp_path / "stage") in line and ".tmp-" not in line
    _assert_nothing_left(tmp_path / "stage")
