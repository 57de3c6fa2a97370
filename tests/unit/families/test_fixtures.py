"""The tiny examples are the published models, small (families/fixtures.py): each tiny config
reads, in transformers, as its published config.json does on every field but the widths and
counts; it keeps the shape of what it shrinks (a head_dim apart from hidden / heads, grouped
or multi-query heads, a window, top-k routing among more experts); and each published
config.json is one its architecture stages (none refused but Mistral-Nemo's head_dim)."""

from __future__ import annotations

import copy
import json

import pytest
import transformers

from onnxforge.families import fixtures
from onnxforge.families.gpt_oss.synthetic import TINY as GPT_OSS_TINY
from onnxforge.families.maxtext.architectures import ARCHITECTURES, recognize

# (its config class, the tiny config, the published model it stands for, its architecture), by
# example name
CASES = [
    pytest.param(
        arch.config_class, arch.tiny, arch.default_model, arch, id=f"tiny-{arch.model_type}"
    )
    for arch in ARCHITECTURES.values()
] + [
    pytest.param(arch.config_class, tiny, published, arch, id=f"tiny-{name}")
    for arch in ARCHITECTURES.values()
    for name, tiny in arch.variants.items()
    for published in {"llama3.2": ["llama3.2-1b"]}[name]
]
CASES.append(
    pytest.param("GptOssConfig", GPT_OSS_TINY, "gpt-oss-20b", None, id="tiny-gpt-oss (gpt_oss)")
)


def read(config_class: str, config: dict) -> dict:
    """``config`` as transformers reads it (its RoPE formats, legacy values and defaults), on a
    copy: its config classes write into the RoPE dicts they are given."""
    kept = copy.deepcopy({k: v for k, v in config.items() if k not in fixtures.NOT_MODEL_FIELDS})
    return getattr(transformers, config_class)(**kept).to_dict()


def differences(config_class: str, tiny: dict, model: str) -> dict:
    """The fields a tiny config reads otherwise than its published model, neither a width nor
    a count: {field: (published, tiny)}."""
    published, small = read(config_class, fixtures.published(model)), read(config_class, tiny)
    skip = fixtures.SIZE_FIELDS | fixtures.NOT_MODEL_FIELDS
    return {
        key: (published.get(key), small.get(key))
        for key in published.keys() | small.keys()
        if key not in skip and published.get(key, "absent") != small.get(key, "absent")
    }


@pytest.mark.parametrize(("config_class", "tiny", "model", "arch"), CASES)
def test_a_tiny_config_is_its_published_model_but_for_widths_and_counts(
    config_class, tiny, model, arch
):
    assert differences(config_class, tiny, model) == {}


def shape(config: dict) -> dict:
    """What shrinking keeps: how heads, windows, experts and layers relate."""
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", 0)
    counts = ("num_local_experts", "num_experts", "n_routed_experts")
    experts = next((config[k] for k in counts if config.get(k)), 0)
    head_dim = config.get("head_dim")
    return {
        "head_dim apart from hidden / heads": bool(
            head_dim and head_dim * heads != config["hidden_size"] and "kv_lora_rank" not in config
        ),
        "kv heads": "all" if kv in (0, heads) else "one" if kv == 1 else "grouped",
        "windowed": bool(config.get("sliding_window")) and config.get("use_sliding_window", True),
        "query scalar is head_dim": config.get("query_pre_attn_scalar", head_dim) == head_dim,
        "routes among more experts than it picks": experts > config.get("num_experts_per_tok", 0),
        "first dense layers then MoE": config.get("first_k_dense_replace", 0)
        < config["num_hidden_layers"],
        "layer types": sorted(set(config.get("layer_types") or [])),
    }


@pytest.mark.parametrize(("config_class", "tiny", "model", "arch"), CASES)
def test_a_tiny_config_keeps_the_shape_of_its_published_model(config_class, tiny, model, arch):
    published = read(config_class, fixtures.published(model))
    assert shape(read(config_class, tiny)) == shape(published)
    assert tiny["hidden_size"] <= 64 < published["hidden_size"]  # and it is small


def test_a_fixture_that_differs_from_its_model_is_seen():
    """The old tiny Llama 3.1 (norm epsilon 1e-6, the config class's default; published 1e-5)
    and a tiny Qwen3 MoE that picks 2 experts (published: 8) each fail the test above."""
    llama = ARCHITECTURES["llama3.1"]
    old = dict(llama.tiny, rms_norm_eps=1e-6)
    assert differences(llama.config_class, old, "llama3.1-8b") == {"rms_norm_eps": (1e-5, 1e-6)}
    qwen = ARCHITECTURES["qwen3_moe"]
    two = dict(qwen.tiny, num_experts_per_tok=2)
    assert set(differences(qwen.config_class, two, qwen.default_model)) == {"num_experts_per_tok"}


@pytest.mark.parametrize("model", sorted(p.stem for p in fixtures.PUBLISHED.glob("*.json")))
def test_each_published_config_is_staged_by_its_architecture_unrefused(model):
    """The checkpoints users convert: their config.json must not be refused for a field its
    tiny twin never had (google/gemma-2b's hidden_act "gelu", which transformers reads as the
    tanh approximation, was). Mistral-Nemo's head_dim is refused by name: MaxText's converter
    for Mistral cannot lay it out."""
    config = json.loads((fixtures.PUBLISHED / f"{model}.json").read_text())
    text = config.get("text_config", config)
    text.setdefault("model_type", config["model_type"])
    if text["model_type"] == "gemma3":  # the multimodal file's text model
        text["model_type"] = "gemma3_text"
    arch = recognize(read_back(text), f"{model}.json")  # as `onnxforge build ./ckpt` does
    reasons = arch.unsupported(text, arch.default_model)
    if model == "mistral-nemo-12b":
        assert len(reasons) == 1 and reasons[0].startswith("head_dim 128:"), reasons
    else:
        assert reasons == [], reasons


def read_back(config: dict) -> dict:
    """A config.json's fields, with Gemma 3's sparse text config completed as transformers does
    (architecture() reads the sizes)."""
    if config["model_type"] != "gemma3_text":
        return config
    return {**transformers.Gemma3TextConfig(**config).to_dict(), **config}


def test_every_published_file_names_where_it_came_from():
    sources = (fixtures.PUBLISHED / "SOURCES.md").read_text()
    for path in fixtures.PUBLISHED.glob("*.json"):
        assert f"| {path.name} |" in sources, path.name
