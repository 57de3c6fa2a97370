"""The maxtext family's architecture table (pure Python): one file per architecture, which
architecture converts a config.json, the MaxText settings it gets, the fields it refuses at
stage, with why, and ONNX Runtime GenAI's model type for it.

Every architecture's tiny checkpoint goes through the real DAG in test_registry.py."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pkgutil
from pathlib import Path

import pytest

from onnxforge.core.errors import InputError
from onnxforge.families.maxtext import FAMILY as MAXTEXT
from onnxforge.families.maxtext import architectures
from onnxforge.families.maxtext.architectures import (
    ARCHITECTURES,
    FILES,
    Architecture,
    architecture,
    maxtext_overrides,
    rope_type,
    unsupported,
)
from onnxforge.families.maxtext.architectures.base import rope_parameters as rope_parameters_of
from onnxforge.steps.export import genai


def tiny(name: str, **changes) -> dict:
    arch = ARCHITECTURES[name]
    return {**arch.tiny, "model_type": arch.converts[0], **changes}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, "llama"),
        ("llama2-7b", "llama"),
        ("llama3.1-8b", "llama3.1"),
        ("llama3.1-70b", "llama3.1"),
        ("llama3.3-70b", "llama"),  # Llama 2's converter; overrides give it 3.1's RoPE
    ],
)
def test_llama_checkpoints_go_to_the_architecture_of_the_catalog_model(model, expected):
    assert architecture({"model_type": "llama"}, "config.json", model).model_type == expected


def test_an_unknown_model_type_names_every_known_one():
    with pytest.raises(InputError, match=r"model_type 'bert' is not one.*'qwen3_moe'"):
        architecture({"model_type": "bert"}, "config.json")


def test_every_architecture_converts_its_tiny_config_and_refuses_nothing_of_it():
    for name, arch in ARCHITECTURES.items():
        config = tiny(name)
        assert architecture(config, "config.json", arch.default_model) is arch
        assert unsupported(config, arch.default_model) == [], name


def test_llama3_rope_scaling_becomes_maxtexts_llama31_rope():
    assert maxtext_overrides(tiny("llama3.1"))["rope_type"] == "llama3.1"
    assert "rope_type" not in maxtext_overrides(tiny("llama"))


def test_llama32_rope_factor_goes_to_maxtext_and_other_constants_are_refused():
    scaling = {**ARCHITECTURES["llama3.1"].tiny["rope_scaling"], "factor": 32.0}
    llama32 = tiny("llama3.1", rope_scaling=scaling)
    assert unsupported(llama32, "llama3.1-8b") == []
    assert maxtext_overrides(llama32)["rope_linear_scaling_factor"] == 32.0
    assert "rope_linear_scaling_factor" not in maxtext_overrides(tiny("llama3.1"))
    assert ARCHITECTURES["llama3.1"].variants["llama3.2"]["rope_scaling"] == scaling
    (reason,) = unsupported(
        tiny("llama3.1", rope_scaling={**scaling, "high_freq_factor": 2.0}), "m"
    )
    assert reason.startswith("rope_scaling {'high_freq_factor': 2.0}") and "fixed" in reason


def test_mistral_window_becomes_maxtexts_local_sliding_attention():
    overrides = maxtext_overrides(tiny("mistral"))
    assert overrides["attention_type"] == "local_sliding"
    assert overrides["sliding_window_size"] == 8
    assert "attention_type" not in maxtext_overrides(tiny("mistral", sliding_window=None))


def test_a_window_maxtext_cannot_apply_is_refused():
    (reason,) = unsupported(tiny("qwen3", use_sliding_window=True, sliding_window=64), "qwen3-8b")
    assert reason.startswith("sliding_window 64: MaxText's qwen3-8b attends globally")
    assert unsupported(tiny("qwen3", use_sliding_window=False, sliding_window=64), "q") == []


@pytest.mark.parametrize("name", ["mistral", "llama"])
def test_a_head_dim_apart_from_the_width_is_refused_where_the_converter_cannot_lay_it_out(name):
    """Mistral-Nemo's shape (head_dim 128 x 32 heads over hidden 5120), as a tiny config:
    llama_or_mistral_ckpt reshapes every attention kernel to hidden = heads x head_dim."""
    config = tiny(name)
    heads = config["num_attention_heads"]
    wide = dict(config, head_dim=2 * config["hidden_size"] // heads)
    (reason,) = unsupported(wide, "mistral-7b")
    assert reason.startswith(f"head_dim {wide['head_dim']}: MaxText's converter for mistral-7b")
    assert unsupported(dict(config, head_dim=config["hidden_size"] // heads), "m") == []
    # Mixtral's converter (to_maxtext) has no such limit: not refused for it.
    mixtral = tiny("mixtral")
    assert unsupported(dict(mixtral, head_dim=2 * mixtral["hidden_size"] // heads), "m") == []


def test_gemma2_layers_are_pairs_and_its_settings_follow_the_config():
    overrides = maxtext_overrides(tiny("gemma2"))
    assert overrides["base_num_decoder_layers"] == 2  # 4 Hugging Face layers
    assert overrides["sliding_window_size"] == 8
    assert overrides["final_logits_soft_cap"] == 30.0
    assert overrides["attn_logits_soft_cap"] == 50.0
    reasons = unsupported(tiny("gemma2", num_hidden_layers=3, query_pre_attn_scalar=144), "g")
    assert [r.split(" ")[0] for r in reasons] == ["num_hidden_layers", "query_pre_attn_scalar"]


# google/gemma-3-1b-pt's config.json (transformers 4.50): the two RoPEs as flat fields.
GEMMA3_FLAT_ROPE = {
    "rope_parameters": None,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "sliding_window_pattern": 6,
}


def test_gemma3_takes_its_window_and_both_ropes_from_either_config_layout():
    overrides = maxtext_overrides(tiny("gemma3"))  # transformers 5: rope_parameters per layer
    assert overrides["sliding_window_size"] == 8
    assert overrides["rope_max_timescale"] == 1000000.0
    assert overrides["local_rope_max_timescale"] == 10000.0
    assert overrides["rope_linear_scaling_factor"] == 8.0
    flat = tiny("gemma3", **GEMMA3_FLAT_ROPE)
    assert architecture(flat, "config.json").model_type == "gemma3"
    assert unsupported(flat, "gemma3-4b") == []
    overrides = maxtext_overrides(flat)
    assert overrides["rope_max_timescale"] == 1000000.0
    assert overrides["local_rope_max_timescale"] == 10000.0
    assert overrides["rope_linear_scaling_factor"] == 1.0
    scaled = {**flat, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    assert maxtext_overrides(scaled)["rope_linear_scaling_factor"] == 8.0
    assert unsupported(scaled, "gemma3-4b") == []


def test_gemma3_refuses_what_its_maxtext_layers_cannot_do():
    layer_types = ["sliding_attention", "full_attention"] * 3
    yarn = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6},
    }
    config = tiny(
        "gemma3",
        layer_types=layer_types,
        query_pre_attn_scalar=64,
        rope_scaling=None,
        use_bidirectional_attention=True,
        rope_parameters=yarn,
    )
    reasons = unsupported(config, "gemma3-4b")
    assert [r.split(" ")[0] for r in reasons] == [
        "rope_parameters",
        "layer_types:",
        "use_bidirectional_attention:",
        "query_pre_attn_scalar",
    ]
    assert "five sliding-window layers, then a global one" in reasons[1]
    # gemma3-27b scales queries by hidden_size / heads (256 / 4 here), not head_dim (32)
    assert unsupported(tiny("gemma3", hidden_size=256), "gemma3-27b") == [
        "query_pre_attn_scalar 32: MaxText's gemma3-27b scales queries by "
        "hidden_size / num_attention_heads (64) ** -0.5"
    ]
    assert (
        unsupported(tiny("gemma3", hidden_size=256, query_pre_attn_scalar=64), "gemma3-27b") == []
    )


def test_qwen3_moe_is_moe_in_every_layer():
    overrides = maxtext_overrides(tiny("qwen3_moe"))
    assert overrides["num_experts"] == 16 and overrides["num_experts_per_tok"] == 8
    assert overrides["base_moe_mlp_dim"] == overrides["base_mlp_dim"] == 32
    assert overrides["norm_topk_prob"] is True
    (reason,) = unsupported(tiny("qwen3_moe", mlp_only_layers=[0]), "qwen3-30b-a3b")
    assert reason.startswith("mlp_only_layers")


def test_gpt_oss_takes_its_window_yarn_and_swiglu_limit_from_the_config():
    config = tiny(
        "gpt_oss",
        rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "rope_theta": 150000.0,
                         "original_max_position_embeddings": 4096},
        swiglu_limit=7.0,
    )  # fmt: skip
    overrides = maxtext_overrides(config)
    assert overrides["sliding_window_size"] == 16
    assert overrides["rope_factor"] == 32.0 and overrides["rope_truncate"] is False
    assert overrides["rope_max_timescale"] == 150000.0
    assert overrides["mlp_activations_limit"] == 7.0
    assert overrides["num_experts"] == 8 and overrides["base_moe_mlp_dim"] == 32
    assert unsupported(config, "gpt-oss-20b") == []
    (reason,) = unsupported({**config, "layer_types": ["full_attention"] * 2}, "gpt-oss-20b")
    assert reason.startswith("layer_types")


def test_deepseek_v2_takes_mla_moe_and_yarn_from_the_config():
    overrides = maxtext_overrides(tiny("deepseek_v2"))
    assert overrides["first_num_dense_layers"] == 1 and overrides["shared_experts"] == 2
    assert overrides["num_experts"] == 16 and overrides["base_moe_mlp_dim"] == 32
    assert overrides["q_lora_rank"] == 0 and overrides["kv_lora_rank"] == 32
    assert overrides["rope_type"] == "yarn" and overrides["rope_factor"] == 40.0
    assert overrides["mscale"] == 0.707
    # DeepSeek-V2-Lite's config.json as published (before transformers 5): rope_scaling, "type"
    lite = tiny("deepseek_v2")
    assert lite["rope_scaling"]["type"] == "yarn" and "rope_parameters" not in lite
    assert architecture(lite, "config.json").model_type == "deepseek_v2"
    assert unsupported(lite, "deepseek2-16b") == []
    assert maxtext_overrides(lite)["rope_factor"] == 40.0
    refused = tiny(
        "deepseek_v2",
        topk_method="group_limited_greedy",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        rope_scaling=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    reasons = unsupported(refused, "deepseek2-16b")
    assert [r.split(" ")[0] for r in reasons] == [
        "rope_scaling",
        "topk_method",
        "scoring_func",
        "norm_topk_prob",
    ]
    assert (
        reasons[-1]
        == "norm_topk_prob True: MaxText's deepseek2-16b routes with norm_topk_prob False"
    )


def test_deepseek_v3_takes_its_groups_and_query_lora_and_refuses_other_routing():
    config = tiny("deepseek_v3")
    overrides = maxtext_overrides(config)
    assert overrides["n_routing_groups"] == 8 and overrides["topk_routing_group"] == 4
    assert overrides["q_lora_rank"] == 16 and overrides["routed_scaling_factor"] == 2.5
    assert overrides["num_experts"] == 32 and overrides["mscale"] == 1.0
    assert "n_routing_groups" not in maxtext_overrides(tiny("deepseek_v2"))
    assert architecture(config, "config.json", "deepseek3-671b").model_type == "deepseek_v3"
    refused = tiny("deepseek_v3", topk_method="greedy", scoring_func="softmax")
    refused["norm_topk_prob"] = False
    reasons = unsupported(refused, "deepseek3-671b")
    assert [r.split(" ")[0] for r in reasons] == ["topk_method", "scoring_func", "norm_topk_prob"]
    assert reasons[0] == (
        "topk_method 'greedy': MaxText's deepseek3-671b routes with topk_method 'noaux_tc'"
    )


def test_the_registry_has_one_file_per_architecture_and_gathers_every_file():
    """Each module in architectures/ (but ``base``) is one architecture (DeepSeek: V2 and V3,
    one file) and the registry gathers every one, each entry once."""
    package = Path(architectures.__file__).parent
    modules = {m.name for m in pkgutil.iter_modules([str(package)])} - {"base"}
    assert {f.__name__.rsplit(".", 1)[1] for f in FILES} == modules
    entries = [a for f in FILES for a in f.ENTRIES]
    assert all(isinstance(a, Architecture) for a in entries)
    assert list(ARCHITECTURES.values()) == entries  # no model_type declared twice
    for f in FILES:  # a file declares its entries; shared parts live in base
        declared = [v for v in vars(f).values() if isinstance(v, Architecture)]
        assert declared == list(f.ENTRIES), f.__name__


def test_every_architecture_file_declares_its_genai_type_explicitly():
    """No default: every ``Architecture(...)`` names ``genai_type`` (None where GenAI has
    none), so no architecture runs as GenAI's "llama" by omission."""
    (genai_field,) = [f for f in dataclasses.fields(Architecture) if f.name == "genai_type"]
    assert genai_field.default is dataclasses.MISSING
    assert genai_field.default_factory is dataclasses.MISSING
    for f in FILES:
        calls = [
            node
            for node in ast.walk(ast.parse(inspect.getsource(f)))
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Architecture"
        ]
        assert len(calls) == len(f.ENTRIES), f.__name__
        for call in calls:
            assert "genai_type" in {k.arg for k in call.keywords}, f.__name__
    for arch in ARCHITECTURES.values():
        assert arch.genai_type is None or (isinstance(arch.genai_type, str) and arch.genai_type)


def test_architectures_of_one_model_type_read_its_config_json_alike():
    """GenAI and read_config see config.json only: the architectures sharing a model_type
    (Llama 2 and 3) give it the same GenAI type, settings and refusals."""
    for name, arch in ARCHITECTURES.items():
        config = tiny(name)
        for other in ARCHITECTURES.values():
            if config["model_type"] in other.converts:
                assert other.genai_type == arch.genai_type, (name, other.model_type)
                assert other.maxtext_overrides(config) == arch.maxtext_overrides(config)
                assert other.unsupported(config, "m") == arch.unsupported(config, "m")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_genai_writes_the_type_the_architecture_declares(name):
    config = tiny(name)
    assert genai.model_type(MAXTEXT, config, "config.json") == ARCHITECTURES[name].genai_type


def test_genai_refuses_an_architecture_without_a_genai_type_and_an_unknown_model_type(
    monkeypatch,
):
    no_type = dataclasses.replace(ARCHITECTURES["qwen3_moe"], genai_type=None)
    monkeypatch.setitem(ARCHITECTURES, "qwen3_moe", no_type)
    with pytest.raises(InputError, match=r"GenAI has no model type for model_type 'qwen3_moe'"):
        genai.model_type(MAXTEXT, tiny("qwen3_moe"), "config.json")
    with pytest.raises(InputError, match=r"model_type 'qwen2' is not one"):
        genai.model_type(MAXTEXT, {"model_type": "qwen2"}, "config.json")  # never a silent "llama"


def test_rope_is_read_one_way_as_transformers_reads_it():
    assert rope_type({}) == "default"
    assert rope_type({"rope_scaling": {"type": "yarn"}}) == "yarn"  # before transformers 4.45
    theta_only = {"rope_scaling": {"rope_type": "llama3"}, "rope_parameters": {"rope_theta": 5.0}}
    assert rope_type(theta_only) == "llama3"
    config = tiny("llama3.1", rope_theta=1.0, rope_parameters={"rope_theta": 2.0})
    assert maxtext_overrides(config)["rope_max_timescale"] == 2.0


@pytest.mark.parametrize(
    ("rope_parameters", "rope_scaling"),
    [
        ({"rope_type": "default", "rope_theta": 10000.0}, {"type": "linear", "factor": 4.0}),
        ({"rope_type": "yarn", "factor": 2.0}, {"rope_type": "linear", "factor": 4.0}),
        ({"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}, None),
    ],
)
def test_both_rope_fields_read_as_transformers_does(tmp_path, rope_parameters, rope_scaling):
    """The independent reading: transformers' own config class on the same config.json (a
    rope_parameters of type default beside a legacy linear rope_scaling is linear)."""
    import json

    import transformers

    config = {**tiny("llama"), "rope_parameters": rope_parameters, "rope_scaling": rope_scaling}
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters
    ours = rope_parameters_of(config)
    assert rope_type(config) == theirs["rope_type"]
    assert ours.get("factor") == theirs.get("factor")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_tied_head_is_the_table_itself_but_in_gemma(name):
    """MaxText divides tied logits by sqrt(emb_dim) unless told not to; only Gemma's converters
    scale the table to match. A tied Llama 3.2 read with Gemma's division fails its gate
    (max abs 2.6 against transformers)."""
    config = {**tiny(name), "tie_word_embeddings": True}
    overrides = ARCHITECTURES[name].maxtext_overrides(config)
    assert overrides["logits_via_embedding"] is True
    assert overrides["normalize_embedding_logits"] is name.startswith("gemma")
    untied = ARCHITECTURES[name].maxtext_overrides({**config, "tie_word_embeddings": False})
    assert untied["logits_via_embedding"] is False


def test_the_tiny_llama_3_2_ties_its_embeddings_as_published():
    """meta-llama/Llama-3.2-1B's config.json: tie_word_embeddings true, llama3 RoPE factor 32."""
    variant = ARCHITECTURES["llama3.1"].variants["llama3.2"]
    assert variant["tie_word_embeddings"] is True
    assert variant["rope_scaling"]["factor"] == 32.0
