import copy

import pytest
import yaml

from conftest import REPO
from onnxforge.core.errors import InputError
from onnxforge.driver import catalog
from onnxforge.families import FAMILIES

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _config(**changes):
    config = copy.deepcopy(CONFIG)
    config.update(changes)
    return config


def test_shipped_config_is_valid():
    kv = ("f32", "f32-kv", "f32-kv-plain")
    quantized = ("int4-kv", "int8-kv")
    # every example in all three (Example.variants), those that stand for the quantizations
    # in both quantized variants too, and their trained twins in f32 and those
    declared = dict.fromkeys(("gpt-oss", "llama", "mixtral"), kv + quantized)
    declared |= dict.fromkeys(("gpt-oss-trained",), ("f32", *quantized))
    declared |= dict.fromkeys(("llama-trained", "mixtral-trained"), ("f32", *quantized))
    assert catalog.default_targets(catalog.validate(copy.deepcopy(CONFIG))) == [
        f"results/release/tiny-{name}/hf/{variant}"
        for name in (
            *("gpt-oss", "gpt-oss-trained", "llama", "mistral", "mixtral", "gemma"),
            *(
                "llama3.1",
                "llama3.2",
                "qwen3",
                "qwen3_moe",
                "gemma2",
                "gemma3",
                "deepseek_v2",
                "deepseek_v3",
                "gpt_oss",
                "llama-trained",
                "mixtral-trained",
            ),
        )
        for variant in declared.get(name, kv)
    ] + ["results/crosscheck/tiny-gpt-oss-implementations.passed.json"]


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"variants": {"f32": {"dtype": "float8"}}},
            r"variants\.f32\.dtype: 'float8' is not one of",
        ),
        ({"parity": {"long_tokens": "many"}}, r"parity\.long_tokens: 'many' is not of type"),
        ({"colour": "blue"}, r"Additional properties are not allowed \('colour'"),
        (
            {"models": {"m": {"family": "gpt_oss", "checkpoints": {"c": {"source": "s3://x"}}}}},
            r"models\.m\.checkpoints\.c\.source",
        ),
        (  # MaxText's configs/models/NAME.yml: a name, never a path out of that folder
            {
                "models": {
                    "m": {
                        "family": "maxtext",
                        "options": {"model": "../evil"},
                        "checkpoints": {"c": {"source": "synthetic://maxtext"}},
                    }
                }
            },
            r"models\.m\.options\.model: '\.\./evil' does not match",
        ),
    ],
)
def test_schema_violations_name_the_key(change, message):
    with pytest.raises(InputError, match=message):
        catalog.validate(_config(**change))


def test_unknown_family():
    models = {"m": {"family": "gpt_5", "checkpoints": {"c": {"source": "synthetic://gpt_oss"}}}}
    with pytest.raises(InputError, match=r"models\.m\.family: unknown family 'gpt_5'"):
        catalog.validate(_config(models=models, targets=[]))


def test_target_naming_an_unknown_model():
    with pytest.raises(InputError, match=r"targets\[0\]: unknown model 'gpt-9'"):
        catalog.validate(
            _config(targets=[{"model": "gpt-9", "checkpoint": "hf", "variant": "f32"}])
        )


def test_variant_dtype_without_gates():
    with pytest.raises(InputError, match=r"add gates\.bfloat16"):
        catalog.validate(
            _config(
                variants={"bf16": {"dtype": "bfloat16"}},
                gates={"float32": {"max_abs": 1}},
                targets=[],
            )
        )


def test_checkpoint_parity_overrides_apply():
    config = copy.deepcopy(CONFIG)  # an entry of an example's name adds to the example
    config["models"]["tiny-gpt-oss"] = {"checkpoints": {"hf": {"parity": {"long_tokens": 64}}}}
    settings = catalog.parity_settings(catalog.validate(config), "tiny-gpt-oss", "hf", "f32")
    assert settings["long_tokens"] == 64
    assert settings["gates"] == CONFIG["gates"]["float32"]


def test_schema_defaults_are_filled_in_once_by_validate():
    config = catalog.validate(copy.deepcopy(CONFIG))
    assert "opset" not in CONFIG["variants"]["f32"]  # config.yaml leaves it to the schema
    assert config["variants"]["f32"]["opset"] == 23
    assert config["variants"]["f32"]["provider"] == "cpu"
    assert config["variants"]["bf16-cuda"]["provider"] == "cuda"
    settings = catalog.parity_settings(config, "tiny-gpt-oss", "hf", "bf16-cuda")
    assert settings["provider"] == "cuda"


def test_an_unknown_provider_names_the_key():
    config = copy.deepcopy(CONFIG)
    config["variants"]["f32"]["provider"] = "tpu"
    with pytest.raises(InputError, match=r"variants\.f32\.provider: unknown provider 'tpu'"):
        catalog.validate(config)


def test_the_examples_are_spelled_once_in_the_registry():
    """config.yaml names no example; the catalog has each family's, as the family declares it,
    each in every variant it declares, and the checkpoint two implementations build is
    crosschecked."""
    assert not [name for name in CONFIG["models"] if name.startswith("tiny-")]
    config = catalog.validate(copy.deepcopy(CONFIG))
    declared = [(f, e) for f in FAMILIES.values() for e in f.examples]
    for family, example in declared:
        entry = config["models"][example.name]
        assert entry["family"] == family.name
        assert entry["checkpoints"]["hf"]["source"] == example.source
        assert entry.get("options", {}) == example.options
    assert config["targets"] == [
        {"model": e.name, "checkpoint": "hf", "variant": v} for _, e in declared for v in e.variants
    ]
    implementations = config["crosschecks"]["tiny-gpt-oss-implementations"]["targets"]
    assert [t["model"] for t in implementations] == ["tiny-gpt-oss", "tiny-gpt_oss"]


def test_a_config_with_targets_of_its_own_builds_no_example_by_default():
    own = [{"model": "gpt-oss-20b", "checkpoint": "hf", "variant": "f32"}]
    config = catalog.validate(_config(targets=own))
    assert config["crosschecks"] == {}
    assert catalog.default_targets(config) == ["results/release/gpt-oss-20b/hf/f32"]


def test_examples_in_one_variant_and_a_malformed_examples_item():
    config = catalog.validate(_config(targets=[{"examples": "f32-kv"}]))
    assert {t["variant"] for t in config["targets"]} == {"f32-kv"}
    with pytest.raises(InputError, match=r"targets\[0\]: expected \{examples: declared\}"):
        catalog.validate(_config(targets=[{"examples": ["f32"]}]))
    with pytest.raises(InputError, match="unknown variant 'f33'"):
        catalog.validate(_config(targets=[{"examples": "f33"}]))


@pytest.mark.parametrize(
    "variants,message",
    [
        (
            {"int4": {"quantizes": "f16-kv", "quantize": {"bits": 4}}},
            r"variants\.int4\.quantizes: unknown variant 'f16-kv'",
        ),
        (  # a full-sequence graph has no KV decoder to deploy
            {"f32": {"dtype": "float32"}, "int4": {"quantizes": "f32", "quantize": {"bits": 4}}},
            r"variants\.int4\.quantizes: f32 has decoder 'full'; a quantized variant quantizes "
            r"a float32 KV decoder for the CPU",
        ),
        (
            {"int4": {"quantizes": "f32-kv", "quantize": {"bits": 3}}},
            r"variants\.int4\.quantize\.bits: 3 is not one of \[4, 8\]",
        ),
        ({"int4": {"quantizes": "f32-kv"}}, r"variants\.int4: 'quantize' is a required property"),
    ],
)
def test_a_quantized_variant_names_what_is_wrong_with_it(variants, message):
    config = _config()
    config["variants"] |= {"f32-kv": {"dtype": "float32", "decoder": "kv"}, **variants}
    with pytest.raises(InputError, match=message):
        catalog.validate(config)


def test_a_quantized_variant_takes_its_base_and_its_quality_gates():
    config = _config()
    config["variants"] |= {
        "f32-kv": {"dtype": "float32", "decoder": "kv", "ops": "ort"},
        "int8-kv": {"quantizes": "f32-kv", "quantize": {"bits": 8}},
    }
    config["gates"]["int8"] = {"kl_mean_max": 0.02}
    catalog.validate(config)
    variant = config["variants"]["int8-kv"]
    assert {k: variant[k] for k in catalog.INHERITED} == {
        "dtype": "float32", "decoder": "kv", "ops": "ort", "opset": 23, "provider": "cpu"
    }  # fmt: skip
    assert variant["quantize"] == {
        "bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4,
        "algorithm": "rtn", "lm_head": "same", "embeddings": "tied",
    }  # fmt: skip
    model, checkpoint = next(iter(config["models"].items()))
    name = next(iter(checkpoint["checkpoints"]))
    settings = catalog.parity_settings(config, model, name, "int8-kv")
    assert settings["quality_gates"] == {"kl_mean_max": 0.02}
    assert settings["gates"] == config["gates"]["float32"]  # exactness: the float32 gates
