"""A corpus of bad inputs: each case breaks a good checkpoint in one way, and names the step
that must refuse it and a fragment of the one-line error it must give.

For a runner, a case is:

- ``name``: an identifier (test ids, folder names).
- ``make(good_checkpoint_dir, dest_dir)``: writes the broken checkpoint folder at
  ``dest_dir`` (which does not exist yet) from a good one of its ``family`` (the tiny GPT-OSS
  checkpoint of ``tests/conftest.py``; for ``maxtext``, a tiny Llama; each a Hugging Face
  layout written by transformers) and returns the checkpoint entry's overrides
  for the config (``{"source": "hf://..."}``, say), or None for ``{"source":
  "file://<dest_dir>"}``. It never touches ``good_checkpoint_dir``.
- ``step``: the rule that must fail: ``download``, ``stage`` or ``parity_gate`` (where a
  finished report says FAIL); every step before it must succeed.
- ``expected``: a fragment of the error that step prints (in its log; on stderr after
  ``onnxforge <step>: error:``), matched as a plain substring.

A DAG runner builds ``results/<model>/<case.name>/parity/<variant>.passed.json`` with the
checkpoint entry ``{"source": f"file://{dest_dir}", **(overrides or {})}`` and checks that
the rule ``step`` failed, with ``expected`` in its log, that no later step ran and that
nothing under results/release appeared. ``tests/unit/driver/test_bad_inputs.py`` runs each
case through the module function that refuses it.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = "model.safetensors"
STEPS = ("download", "stage", "parity_gate")


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path, Path], dict[str, Any] | None]
    expected: str
    step: str
    family: str = "gpt_oss"  # whose tiny checkpoint ``make`` breaks, and who stages it

    def __post_init__(self):
        assert self.step in STEPS, self.step


# --- writing broken files ------------------------------------------------------------------


def _copy(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest / WEIGHTS


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (as JSON) and its data bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(path: Path, header: Any, data: bytes) -> None:
    """Write a safetensors file: ``header`` as JSON, or as it is when it is text already."""
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _tensors(header: dict[str, Any]) -> list[str]:
    """Tensor names in the order of their data."""
    names = [n for n in header if n != "__metadata__"]
    return sorted(names, key=lambda n: header[n]["data_offsets"][0])


def edit_header(edit: Callable[[dict[str, Any], bytes], tuple[Any, bytes] | None]):
    """A ``make`` that copies the good checkpoint and rewrites its weights file's header (and
    data) with ``edit(header, data)`` (in place, or by returning a new pair)."""

    def make(good: Path, dest: Path) -> None:
        path = _copy(good, dest)
        header, data = _split(path)
        edited = edit(header, data)
        _join(path, *(edited or (header, data)))

    return make


def _set(name_index: int, key: str, value: Any):
    def edit(header, data):
        header[_tensors(header)[name_index]][key] = value

    return edit


def _drop(name_index: int, key: str):
    def edit(header, data):
        del header[_tensors(header)[name_index]][key]

    return edit


def _shift_second(by: int):
    """Move the second tensor's data offsets by ``by``: a gap after the first tensor, or an
    overlap with it (found before what the move does further on)."""

    def edit(header, data):
        entry = header[_tensors(header)[1]]
        entry["data_offsets"] = [x + by for x in entry["data_offsets"]]

    return edit


def _header_as_list(header, data):
    return [header], data


def _duplicate_key(good: Path, dest: Path) -> None:
    path = _copy(good, dest)
    header, data = _split(path)
    first = _tensors(header)[0]
    text = json.dumps(header)
    text = text[:-1] + f", {json.dumps(first)}: {json.dumps(header[first])}}}"
    _join(path, text, data)


def _truncate(keep: float):
    def make(good: Path, dest: Path) -> None:
        path = _copy(good, dest)
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * keep)])

    return make


def _cut_header(good: Path, dest: Path) -> None:
    path = _copy(good, dest)
    raw = path.read_bytes()
    path.write_bytes(raw[:40])


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _in_two_shards(good: Path, dest: Path) -> None:
    """Two shards that both hold one tensor (a stale shard left beside a new one)."""
    path = _copy(good, dest)
    tensors = _load(path)
    path.unlink()
    names = sorted(tensors)
    half = len(names) // 2
    first = {n: tensors[n] for n in names[: half + 1]}
    second = {n: tensors[n] for n in names[half:]}  # names[half] in both
    _save(dest / "model-00001-of-00002.safetensors", first)
    _save(dest / "model-00002-of-00002.safetensors", second)


def _index_names_a_missing_shard(good: Path, dest: Path) -> None:
    path = _copy(good, dest)
    tensors = _load(path)
    path.unlink()
    names = sorted(tensors)
    _save(dest / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:-1]})
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names[:-1]}
    weight_map[names[-1]] = "model-00002-of-00002.safetensors"
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _with_value(tensor: str, value: float, index: tuple[int, ...] | None = (0,)):
    """Finite weights but one (or, with index None, all) of ``tensor``'s values set."""

    def make(good: Path, dest: Path) -> None:
        path = _copy(good, dest)
        tensors = _load(path)
        if index is None:
            tensors[tensor] = np.full_like(tensors[tensor], value)
        else:
            tensors[tensor] = tensors[tensor].copy()
            tensors[tensor][index] = value
        _save(path, tensors)

    return make


# --- sources -------------------------------------------------------------------------------


def _link(target: Callable[[Path, Path], Path]):
    """The good checkpoint with one more file, ``extra.bin``, a link to ``target(good, dest)``."""

    def make(good: Path, dest: Path) -> None:
        _copy(good, dest)
        (dest / "extra.bin").symlink_to(target(good, dest))

    return make


def _outside(good: Path, dest: Path) -> Path:
    outside = dest.parent / f"{dest.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.bin").write_bytes(b"not part of the checkpoint")
    return outside / "secret.bin"


def _folder_outside(good: Path, dest: Path) -> Path:
    return _outside(good, dest).parent


def _dangling(good: Path, dest: Path) -> Path:
    return dest / "no-such-file"


def _no_weights(good: Path, dest: Path) -> None:
    _copy(good, dest).unlink()


def _a_file(good: Path, dest: Path) -> dict[str, Any]:
    _copy(good, dest)
    return {"source": f"file://{dest / WEIGHTS}"}


def _source(uri: str):
    def make(good: Path, dest: Path) -> dict[str, Any]:
        _copy(good, dest)
        return {"source": uri}

    return make


_SPEC = "The file is damaged or was not written by a safetensors library"

CASES: list[BadInput] = [
    # safetensors: header and offsets
    BadInput(
        "header-is-a-list", edit_header(_header_as_list), "the header is a JSON list", "stage"
    ),
    BadInput("header-not-json", edit_header(lambda h, d: ("}{", d)), "unreadable", "stage"),
    BadInput("entry-without-shape", edit_header(_drop(0, "shape")), "has no 'shape'", "stage"),
    BadInput("entry-without-dtype", edit_header(_drop(3, "dtype")), "has no 'dtype'", "stage"),
    BadInput("unknown-dtype", edit_header(_set(2, "dtype", "F31")), "unknown dtype 'F31'", "stage"),
    BadInput(
        "shape-not-matching-bytes",
        edit_header(lambda h, d: h[_tensors(h)[0]]["shape"].append(2)),
        "bytes but shape",
        "stage",
    ),
    BadInput(
        "negative-offset", edit_header(_set(0, "data_offsets", [-4, 0])), "0 <= begin", "stage"
    ),
    BadInput(
        "begin-after-end",
        edit_header(_set(0, "data_offsets", [16, 0])),
        "expected [begin, end] with 0 <= begin <= end",
        "stage",
    ),
    BadInput("offsets-gap", edit_header(_shift_second(8)), "belong to no tensor", "stage"),
    BadInput("offsets-overlap", edit_header(_shift_second(-4)), "overlap", "stage"),
    BadInput(
        "trailing-bytes",
        edit_header(lambda h, d: (h, d + bytes(16))),
        "16 bytes after the last tensor",
        "stage",
    ),
    BadInput("name-twice-in-header", _duplicate_key, "is defined twice in the header", "stage"),
    # safetensors: files
    BadInput("truncated-data", _truncate(0.5), "the file is truncated", "stage"),
    BadInput("truncated-header", _cut_header, "exceeds the file", "stage"),
    BadInput(
        "tensor-in-two-shards",
        _in_two_shards,
        "is defined in both model-00001-of-00002.safetensors and model-00002-of-00002.safetensors",
        "stage",
    ),
    BadInput(
        "index-names-a-missing-shard",
        _index_names_a_missing_shard,
        "names model-00002-of-00002.safetensors",
        "stage",
    ),
    # non-finite values: refused in the weights, and caught in the logits when finite weights
    # overflow
    BadInput(
        "nan-weight",
        _with_value("model.layers.1.self_attn.q_proj.weight", np.nan, (3, 5)),
        "tensor 'model.layers.1.self_attn.q_proj.weight'",
        "stage",
    ),
    BadInput(
        "inf-weight",
        _with_value("model.norm.weight", -np.inf),
        "values are not finite (first: -inf at [0])",
        "stage",
    ),
    BadInput(
        "weights-that-overflow",
        _with_value("model.norm.weight", 3e38, index=None),
        "non-finite value(s)",
        "parity_gate",
    ),
    # sources
    BadInput("link-out-of-the-folder", _link(_outside), "extra.bin is a link to", "download"),
    BadInput("broken-link", _link(_dangling), "extra.bin is a broken link", "download"),
    BadInput("link-to-a-folder", _link(_folder_outside), "is a link to a folder", "download"),
    BadInput("no-weights", _no_weights, "holds no *.safetensors file", "download"),
    BadInput("source-is-a-file", _a_file, "is not a directory", "download"),
    BadInput(
        "revision-no-ref-can-be",
        _source("hf://acme/tiny-gpt-oss@not a sha!"),
        "revision 'not a sha!' is not a branch, tag or commit sha",
        "download",
    ),
    BadInput("unknown-scheme", _source("s3://bucket/model"), "unsupported scheme 's3'", "download"),
]


def source_of(case_overrides: dict[str, Any] | None, dest: Path) -> str:
    """The source a case's checkpoint entry names."""
    return (case_overrides or {}).get("source", f"file://{dest}")


# --- checkpoints whose files are well-formed but do not describe the model -----------------
# Refused by stage's check of the family's tensor set and config.json (a DAG or CLI runner:
# their tensors read fine, so the module runner of test_bad_inputs.py does not take them).


def _edit_tensors(edit: Callable[[dict[str, np.ndarray]], None]):
    def make(good: Path, dest: Path) -> None:
        path = _copy(good, dest)
        tensors = _load(path)
        edit(tensors)
        _save(path, tensors)

    return make


def _edit_config(**changes: Any):
    def make(good: Path, dest: Path) -> None:
        _copy(good, dest)
        config = json.loads((dest / "config.json").read_text())
        config.update(changes)
        (dest / "config.json").write_text(json.dumps(config))

    return make


def _config_text(text: str | None):
    def make(good: Path, dest: Path) -> None:
        _copy(good, dest)
        if text is None:
            (dest / "config.json").unlink()
        else:
            (dest / "config.json").write_text(text)

    return make


def _with_entry(**entry: Any):
    def make(good: Path, dest: Path) -> dict[str, Any]:
        _copy(good, dest)
        return dict(entry)

    return make


def _rope_theta(value: Any):
    """config.json's rope_theta set to ``value``, wherever the file keeps it (top level, or in
    rope_parameters / rope_scaling)."""

    def make(good: Path, dest: Path) -> None:
        _copy(good, dest)
        config = json.loads((dest / "config.json").read_text())
        config["rope_theta"] = value
        for key in ("rope_parameters", "rope_scaling"):
            if isinstance(config.get(key), dict) and "rope_theta" in config[key]:
                config[key]["rope_theta"] = value
        (dest / "config.json").write_text(json.dumps(config))

    return make


def _shards_without_index(good: Path, dest: Path) -> None:
    """The weights in two shards (each tensor in one), without model.safetensors.index.json."""
    path = _copy(good, dest)
    tensors = _load(path)
    path.unlink()
    names = sorted(tensors)
    half = len(names) // 2
    _save(dest / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:half]})
    _save(dest / "model-00002-of-00002.safetensors", {n: tensors[n] for n in names[half:]})


def _cast(name: str, dtype) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda tensors: tensors.update({name: tensors[name].astype(dtype)})


STAGE_CASES: list[BadInput] = [
    BadInput(
        "tensor-nothing-uses",
        _edit_tensors(lambda t: t.update(extra=np.zeros(3, np.float32))),
        "tensor 'extra' is not part of the model",
        "stage",
    ),
    BadInput(
        "int32-weight",
        _edit_tensors(_cast("model.norm.weight", np.int32)),
        "tensor 'model.norm.weight' is stored as int32; expected a floating-point dtype",
        "stage",
    ),
    BadInput(
        "missing-tensor",
        _edit_tensors(lambda t: t.pop("model.layers.1.self_attn.sinks")),
        "'model.layers.1.self_attn.sinks' is missing",
        "stage",
    ),
    BadInput(
        "wrong-shape",
        _edit_tensors(lambda t: t.update({"model.norm.weight": np.ones(3, np.float32)})),
        "expects",
        "stage",
    ),
    BadInput(
        "fewer-layers-in-config-than-weights",
        _edit_config(num_hidden_layers=1),
        "tensor 'model.layers.1.",
        "stage",
    ),
    BadInput("zero-layers", _edit_config(num_hidden_layers=0), "expected at least 1", "stage"),
    BadInput(
        "width-not-a-number",
        _edit_config(hidden_size="sixty-four"),
        "hidden_size is 'sixty-four'; expected a number (int)",
        "stage",
    ),
    BadInput(
        "short-layer-types",
        _edit_config(layer_types=["full_attention"]),
        "layer_types has 1 entries for num_hidden_layers 2",
        "stage",
    ),
    BadInput(
        "another-familys-model-type",
        _edit_config(model_type="mixtral"),
        "model_type is 'mixtral', not 'gpt_oss'",
        "stage",
    ),
    BadInput("no-config-json", _config_text(None), "config.json: missing", "stage"),
    BadInput("config-not-json", _config_text("{vocab_size: 256"), "not valid JSON", "stage"),
    BadInput("config-is-a-list", _config_text("[1, 2]"), "expected a JSON object", "stage"),
    # numbers transformers refuses at parity (and zeros that are a log of zero later): stage
    BadInput(
        "vocab-size-a-string",
        _edit_config(vocab_size="256"),
        "vocab_size is '256'; expected a number (int) written without quotes",
        "stage",
    ),
    BadInput(
        "vocab-size-a-float",
        _edit_config(vocab_size=256.0),
        "vocab_size is 256.0; expected a number (int) without a decimal point",
        "stage",
    ),
    BadInput(
        "sliding-window-zero",
        _edit_config(sliding_window=0),
        "sliding_window is 0; expected at least 1",
        "stage",
    ),
    BadInput(
        "rope-theta-zero", _rope_theta(0), "rope_theta is 0.0; expected a number above 0", "stage"
    ),
    BadInput(
        "more-experts-per-token-than-experts",
        _edit_config(num_experts_per_tok=9),
        "num_experts_per_tok is 9; expected 1 to num_local_experts (8)",
        "stage",
    ),
    BadInput(
        "two-shards-without-an-index",
        _shards_without_index,
        "2 safetensors shards (model-00001-of-00002.safetensors, "
        "model-00002-of-00002.safetensors) but no model.safetensors.index.json",
        "stage",
    ),
]

# Cases in the catalog entry rather than the folder (the DAG runner takes them).
ENTRY_CASES: list[BadInput] = [
    BadInput(
        "more-layers-than-the-checkpoint",
        _with_entry(layers=5),
        "cannot keep 5 layers; num_hidden_layers is 2",
        "stage",
    ),
    BadInput(
        "subdir-that-is-not-there",
        _with_entry(subdir="original"),
        "original/config.json: missing",
        "stage",
    ),
    BadInput(
        "synthetic-seed-not-a-number",
        _source("synthetic://gpt_oss?seed=abc"),
        "seed is 'abc'; expected a whole number >= 0",
        "download",
    ),
]


# The maxtext family's stage, on a tiny Llama (MaxText's llama2-7b): what its own checks refuse
# before MaxText's converter sees the files (which would crash, or stage another model than
# the checkpoint), and what that converter refuses.
MAXTEXT_CASES: list[BadInput] = [
    BadInput(f"maxtext-{name}", make, expected, "stage", family="maxtext")
    for name, make, expected in [
        (
            "nan-weight",
            _with_value("model.layers.1.self_attn.q_proj.weight", np.nan, (3, 5)),
            "tensor 'model.layers.1.self_attn.q_proj.weight': 1 of 4096 values are not finite "
            "(first: nan at [3, 5])",
        ),
        (
            "inf-weight",
            _with_value("model.norm.weight", -np.inf),
            "values are not finite (first: -inf at [0])",
        ),
        ("truncated-data", _truncate(0.5), "the file is truncated"),
        (
            "int32-weight",
            _edit_tensors(_cast("model.norm.weight", np.int32)),
            "tensor 'model.norm.weight' is stored as int32; expected a floating-point dtype",
        ),
        (
            "fewer-layers-in-config-than-weights",
            _edit_config(num_hidden_layers=1),
            "is of layer 1, but config.json's num_hidden_layers says the files hold 1",
        ),
        (
            "missing-tensor",
            _edit_tensors(lambda t: t.pop("model.layers.1.mlp.down_proj.weight")),
            "is missing (MaxText's Llama/Mistral converter needs it)",
        ),
        (
            "tensor-nothing-uses",
            _edit_tensors(lambda t: t.update(extra=np.zeros(3, np.float32))),
            "MaxText's converter does not know tensor 'extra'",
        ),
        (
            "wrong-shape",
            _edit_tensors(lambda t: t.update({"model.norm.weight": np.ones(3, np.float32)})),
            "MaxText parameter decoder/decoder_norm/scale converted to shape (3,)",
        ),
        (
            "linear-rope",
            _edit_config(rope_scaling={"rope_type": "linear", "factor": 2.0}),
            "cannot honor rope_scaling type 'linear': MaxText's llama2-7b has no such RoPE",
        ),
        (
            "attention-bias",
            _edit_config(attention_bias=True),
            "cannot honor attention_bias: MaxText's llama2-7b has no such biases",
        ),
        (
            "head-dim-apart-from-the-width",  # Mistral-Nemo's shape
            _edit_config(head_dim=32),
            "cannot honor head_dim 32: MaxText's converter for llama2-7b (llama_or_mistral_ckpt)",
        ),
        (
            "window-on-a-global-model",
            _edit_config(sliding_window=8),
            "cannot honor sliding_window 8: MaxText's llama2-7b attends globally in every layer",
        ),
        (
            "model-type-no-architecture-stages",
            _edit_config(model_type="qwen2"),
            "model_type 'qwen2' is not one the maxtext family stages",
        ),
        ("no-config-json", _config_text(None), "config.json: missing"),
        (
            "vocab-size-a-string",
            _edit_config(vocab_size="256"),
            "vocab_size is '256'; expected a number (int) written without quotes",
        ),
        (
            "zero-layers",
            _edit_config(num_hidden_layers=0),
            "num_hidden_layers is 0; expected at least 1",
        ),
        (
            "rope-theta-zero",
            _rope_theta(0),
            "rope_parameters.rope_theta is 0.0; expected a number above 0",
        ),
        (
            "width-not-a-number",
            _edit_config(hidden_size="sixty-four"),
            "hidden_size is 'sixty-four'; expected a number (int)",
        ),
    ]
]


# --- `onnxforge build` command lines refused before anything runs ----------------------------


@dataclass(frozen=True)
class BadCommand:
    """``arguments(checkpoint_dir)``: the arguments after ``onnxforge build`` for a good
    checkpoint folder; ``expected``: a fragment of the one line it must print, after
    ``onnxforge build: error: ``, exit status 2, with nothing written under results/."""

    name: str
    arguments: Callable[[Path], list[str]]
    expected: str


CLI_CASES: list[BadCommand] = [
    BadCommand(
        "name-of-a-catalog-model",
        lambda folder: [str(folder), "--name", "tiny-gpt-oss"],
        "--name 'tiny-gpt-oss' is a catalog model's name (config.yaml models.tiny-gpt-oss)",
    ),
    BadCommand("empty-name", lambda folder: [str(folder), "--name", ""], "--name is empty"),
    BadCommand(
        "name-with-a-path-separator",
        lambda folder: [str(folder), "--name", "a/b"],
        "--name 'a/b' holds a path separator",
    ),
    BadCommand(
        "name-too-long-for-the-results-tree",
        lambda folder: [str(folder), "--name", "n" * 300],
        "--name is 300 characters long",
    ),
    BadCommand(
        "name-reserved-by-the-results-tree",
        lambda folder: [str(folder), "--name", "release"],
        "--name 'release' is reserved for results/release",
    ),
    BadCommand(
        "name-for-a-catalog-model",
        lambda folder: ["tiny-gpt-oss", "--name", "mine"],
        "--name 'mine' names a checkpoint folder or hf:// source",
    ),
    BadCommand(
        "maxtext-model-that-is-a-path",
        lambda folder: [str(folder), "--maxtext-model", "../evil"],
        "--maxtext-model '../evil': expected the NAME of MaxText's configs/models/NAME.yml",
    ),
    BadCommand(
        "maxtext-model-for-another-family",
        lambda folder: [str(folder), "--family", "gpt_oss", "--maxtext-model", "llama2-7b"],
        "--maxtext-model llama2-7b is for --family maxtext, not --family gpt_oss",
    ),
]
