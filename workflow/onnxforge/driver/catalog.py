"""The config: schema validation, cross-references, and the targets it asks for.

Kept out of the Snakefile so that it is unit-tested and gives errors that name the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from onnxforge.core import paths, providers
from onnxforge.core.errors import InputError
from onnxforge.core.paths import Target

SCHEMA = Path(__file__).with_name("config.schema.yaml")  # package data


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into ``base`` the way Snakemake merges config files."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


def variant_defaults() -> dict[str, Any]:
    """The schema's defaults for a variant (opset, provider): for code that builds an export
    outside a configured target (the MaxText survey)."""
    variant = _schema()["properties"]["variants"]["additionalProperties"]["properties"]
    return {name: spec["default"] for name, spec in variant.items() if "default" in spec}


def _filling_defaults(validator_class, jsonschema):
    """A validator that also writes each property's schema ``default`` into the config: the
    schema is the one place a default is set, applied once, here."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


EXAMPLES_KEY = "examples"  # a ``targets`` item: {examples: declared | VARIANT}
DECLARED = "declared"


def crosscheck_name(example_name: str) -> str:
    return f"{example_name}-implementations"


def with_examples(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """The families' tiny examples, spelled once in the registry (``Family.examples``), put in
    the config: each is a catalog model (merged under the config's own entry of that name,
    which may add to it: parity settings, another checkpoint), ``{examples: declared}`` in
    ``targets`` becomes each example in each variant it declares (``{examples: VARIANT}``:
    each in VARIANT), and, where the targets have the examples, examples that build one
    checkpoint with several implementations are crosschecked (a config with targets of its own
    builds no example by default). In place; returns ``config``."""
    from onnxforge.families import FAMILIES

    examples = [(f, e) for f in FAMILIES.values() for e in f.examples]
    models = config.get("models")
    if not isinstance(models, dict):
        return config  # the schema names what is wrong
    for family, example in examples:
        entry = {"family": family.name, "checkpoints": {"hf": {"source": example.source}}}
        if example.options:
            entry["options"] = copy.deepcopy(example.options)
        models[example.name] = deep_update(entry, models.get(example.name) or {})
    targets = config.get("targets")
    wanted_examples = False
    if isinstance(targets, list):
        expanded = []
        for i, item in enumerate(targets):
            if not (isinstance(item, dict) and EXAMPLES_KEY in item):
                expanded.append(item)
                continue
            wanted, wanted_examples = item[EXAMPLES_KEY], True
            if set(item) != {EXAMPLES_KEY} or not isinstance(wanted, str):
                raise InputError(
                    f"{source}: targets[{i}]: expected {{examples: {DECLARED}}} or "
                    f"{{examples: VARIANT}}, got {item!r}"
                )
            expanded += [
                {"model": e.name, "checkpoint": "hf", "variant": variant}
                for _, e in examples
                for variant in (e.variants if wanted == DECLARED else (wanted,))
            ]
        config["targets"] = expanded
    crosschecks = config.setdefault("crosschecks", {})
    if not wanted_examples:
        return config
    groups: dict[str, list[str]] = {}
    for _, example in examples:
        if example.same_checkpoint_as:
            first = example.same_checkpoint_as
            groups.setdefault(first, [first]).append(example.name)
    if isinstance(crosschecks, dict):
        for first, names in groups.items():
            crosschecks.setdefault(
                crosscheck_name(first),
                {"targets": [{"model": n, "checkpoint": "hf", "variant": "f32"} for n in names]},
            )
    return config


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check the config against the schema and itself, filling the schema's defaults in; raise
    InputError naming the key. The families' examples are put in first (``with_examples``)."""
    import jsonschema  # here: the maxtext environment reads the catalog's defaults without it

    if isinstance(config, dict):
        with_examples(config, source)

    validator = _filling_defaults(jsonschema.Draft202012Validator, jsonschema)(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{_key_path(e.absolute_path)}: {e.message}" for e in errors[:10]]
        raise InputError(f"{source} does not match {SCHEMA.name}:\n  " + "\n  ".join(lines))

    from onnxforge.families import FAMILIES

    for name, model in config["models"].items():
        if name in ("release", paths.CROSSCHECK_DIR):
            raise InputError(f"{source}: models.{name}: the name is reserved for results/{name}")
        if model["family"] not in FAMILIES:
            raise InputError(
                f"{source}: models.{name}.family: unknown family {model['family']!r}; "
                f"known: {sorted(FAMILIES)}"
            )
    for name, variant in config["variants"].items():
        if "quantizes" in variant:
            _inherit_from_quantized(config["variants"], name, source)
        if variant["provider"] not in providers.PROVIDERS:
            raise InputError(
                f"{source}: variants.{name}.provider: unknown provider {variant['provider']!r}; "
                f"known: {sorted(providers.PROVIDERS)}"
            )
        if variant["dtype"] not in config["gates"]:
            raise InputError(
                f"{source}: variants.{name}.dtype is {variant['dtype']!r} but gates has no "
                f"entry for it; add gates.{variant['dtype']}"
            )
    for i, target in enumerate(config["targets"]):
        lookup_target(config, **target, where=f"{source}: targets[{i}]")
    for name in config["crosschecks"]:
        crosscheck_targets(config, name, where=f"{source}: crosschecks.{name}")
    return config


# What a quantized variant takes from the variant it quantizes (its export is that one's).
INHERITED = ("dtype", "decoder", "ops", "opset", "provider")


def _inherit_from_quantized(variants: dict[str, Any], name: str, source: str) -> None:
    """``variants[name]`` (``quantizes: BASE``) with BASE's dtype, decoder, ops, opset and
    provider; BASE must be a float32 KV decoder for the CPU, itself unquantized."""
    variant = variants[name]
    base_name = variant["quantizes"]
    where = f"{source}: variants.{name}.quantizes"
    base = variants.get(base_name)
    if base is None:
        raise InputError(f"{where}: unknown variant {base_name!r}; config has {sorted(variants)}")
    wanted = {"quantizes": None, "dtype": "float32", "decoder": "kv", "provider": "cpu"}
    for key, value in wanted.items():
        if base.get(key) != value:
            raise InputError(
                f"{where}: {base_name} has {key} {base.get(key)!r}; a quantized variant "
                f"quantizes a float32 KV decoder for the CPU (dtype float32, decoder kv, "
                f"provider cpu, not itself quantized)"
            )
    variant.update({key: base[key] for key in INHERITED})


def is_quantized(config: dict[str, Any], variant: str) -> bool:
    return "quantizes" in variant_entry(config, variant)


def crosscheck_targets(
    config: dict[str, Any], name: str, where: str = "crosscheck"
) -> list[Target]:
    """The targets crosscheck ``name`` compares: different models (implementations) of one
    dtype, so that one gate applies to every pair."""
    if name not in config["crosschecks"]:
        raise InputError(
            f"{where}: unknown crosscheck {name!r}; config has {sorted(config['crosschecks'])}"
        )
    entries = config["crosschecks"][name]["targets"]
    targets = [
        lookup_target(config, **t, where=f"{where}.targets[{i}]") for i, t in enumerate(entries)
    ]
    if len({t.model for t in targets}) != len(targets):
        raise InputError(f"{where}: each target must be another model (implementation)")
    dtypes = {variant_entry(config, t.variant)["dtype"] for t in targets}
    if len(dtypes) != 1:
        raise InputError(
            f"{where}: the targets' variants have dtypes {sorted(dtypes)}; a crosscheck "
            "compares one dtype (its gate applies to every pair)"
        )
    return targets


def crosscheck_gates(config: dict[str, Any], name: str) -> dict[str, float]:
    first = crosscheck_targets(config, name)[0]
    return config["gates"][variant_entry(config, first.variant)["dtype"]]


def lookup_target(
    config: dict[str, Any], model: str, checkpoint: str, variant: str, where: str = "target"
) -> Target:
    models = config["models"]
    if model not in models:
        raise InputError(f"{where}: unknown model {model!r}; the catalog has {sorted(models)}")
    checkpoints = models[model]["checkpoints"]
    if checkpoint not in checkpoints:
        raise InputError(
            f"{where}: model {model!r} has no checkpoint {checkpoint!r}; "
            f"it has {sorted(checkpoints)}"
        )
    if variant not in config["variants"]:
        raise InputError(
            f"{where}: unknown variant {variant!r}; config has {sorted(config['variants'])}"
        )
    return Target(model, checkpoint, variant)


def model_entry(config: dict[str, Any], model: str) -> dict[str, Any]:
    if model not in config["models"]:
        raise InputError(f"unknown model {model!r}; the catalog has {sorted(config['models'])}")
    return config["models"][model]


def variant_entry(config: dict[str, Any], variant: str) -> dict[str, Any]:
    if variant not in config["variants"]:
        raise InputError(f"unknown variant {variant!r}; config has {sorted(config['variants'])}")
    return config["variants"][variant]


def checkpoint_entry(config: dict[str, Any], model: str, checkpoint: str) -> dict[str, Any]:
    lookup_target(config, model, checkpoint, next(iter(config["variants"])))
    return config["models"][model]["checkpoints"][checkpoint]


def parity_settings(config: dict[str, Any], model: str, checkpoint: str, variant: str) -> dict:
    """What ParitySettings takes: global parity options, the checkpoint's overrides, the gates."""
    entry = variant_entry(config, variant)
    dtype = entry["dtype"]
    overrides = checkpoint_entry(config, model, checkpoint).get("parity", {})
    settings = deep_update(copy.deepcopy(config["parity"]), overrides)
    diagnosis = settings["diagnosis"]
    quantized = {}
    if "quantize" in entry:
        bits = f"int{entry['quantize']['bits']}"
        if bits not in config["gates"]:
            raise InputError(f"variants.{variant} quantizes to {bits}: add gates.{bits}")
        quantized = {
            "quantize": entry["quantize"],
            "quality_gates": config["gates"][bits],
            "quality_gated": _trained(checkpoint_entry(config, model, checkpoint)["source"]),
        }
    return {
        **settings,
        "diagnosis": {"run": diagnosis["run"], "tolerance": diagnosis["tolerance"][dtype]},
        "dtype": dtype,
        "provider": entry["provider"],
        "decoder": entry["decoder"],
        "opset": entry["opset"],
        "gates": config["gates"][dtype],
        **quantized,
    }


def _trained(source: str) -> bool:
    """Whether a checkpoint's quality can be judged: any but an untrained synthetic one
    (``synthetic://`` without ``trained=``: random weights, whose quantized figures are
    reported, not gated)."""
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(source)
    return parsed.scheme != "synthetic" or "trained" in parse_qs(parsed.query)


def default_targets(config: dict[str, Any]) -> list[str]:
    """Each target's release, and each crosscheck's verdict."""
    releases = [lookup_target(config, **t).release for t in config["targets"]]
    crosschecks = [paths.CROSSCHECK_PASSED.format(name=n) for n in config["crosschecks"]]
    return releases + crosschecks


def environments_for(config: dict[str, Any], targets: list[str]) -> list[str]:
    """The environments whose jobs building ``targets`` (result paths; none: the config's
    ``targets``) may run: `make run` builds only those."""
    from onnxforge.families import get_family

    config = with_examples(config)  # `make run` reads config.yaml unvalidated
    if not targets:
        models = {t["model"] for t in config["targets"]}
        crosschecks = config.get("crosschecks", {})
        models |= {t.model for n in crosschecks for t in crosscheck_targets(config, n)}
    else:
        models = {part for t in targets for part in Path(t).parts if part in config["models"]}
        for path in targets:
            parts = Path(path).parts
            if parts[:2] == (paths.RESULTS, paths.CROSSCHECK_DIR) and len(parts) > 2:
                name = parts[2].removesuffix(".passed.json")
                models |= {t.model for t in crosscheck_targets(config, name)}
    environments = {"jax"} | {
        get_family(config["models"][model]["family"]).environment for model in models
    }
    if any(Path(t).name.startswith("maxtext-survey") for t in targets):
        environments.add("maxtext")
    return sorted(environments)
