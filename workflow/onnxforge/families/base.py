"""What a model family provides: the contract every step of the pipeline calls, and nothing
more. Adding a family is one module and one registry entry; its ``examples`` bring its tests.

Family modules import their heavy dependencies (JAX, MaxText, transformers) inside methods:
the registry is read by the Snakefile and the catalog, which must start fast and run before
any environment but the driver's exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onnxforge.errors import InputError

# What Family.perturb can scale in layer 1: the attention output projection, the MLP (a MoE's
# experts' output projection), one expert's input projection, the router.
PERTURB_PARTS = ("attention", "mlp", "expert", "router")
PERTURB_DEFAULT = "mlp"


@dataclass(frozen=True)
class LoadedModel:
    """A staged model: ``apply(params, token_ids [batch, sequence]) -> logits``.

    The weights are an argument, not a closure: ``jax.jit(apply)`` then takes them as buffers
    instead of baking a second copy into the compiled program. ``bound`` closes over them
    for jax2onnx, which makes them the ONNX initializers.
    """

    apply: Callable[[Any, Any], Any]
    params: Any
    vocab_size: int

    def bound(self) -> Callable[[Any], Any]:
        return lambda token_ids: self.apply(self.params, token_ids)


@dataclass(frozen=True)
class LoadedDecoder:
    """A staged model as a KV-cache decoder: one ``step`` serves prefill (past length 0) and
    decode, in the I/O contract of Optimum's ORTModelForCausalLM and ONNX Runtime GenAI.

    ``step(params, input_ids [batch, sequence], attention_mask [batch, past + sequence],
    position_ids [batch, sequence], past) -> (logits [batch, sequence, vocab], present)``;
    ``past`` and ``present`` hold one ``(key, value)`` pair per layer, each
    ``[batch, kv_heads, length, head_dim]`` (``present``'s length is past + sequence).
    A left-padded row (mask 0 on its padding) gets the logits it gets alone.
    """

    step: Callable[..., Any]
    params: Any
    vocab_size: int
    num_layers: int
    kv_heads: int
    head_dim: int

    def bound(self) -> Callable[..., Any]:
        return lambda *inputs: self.step(self.params, *inputs)


@dataclass(frozen=True)
class Staged:
    """What a family's stage wrote, for the stage's manifest.

    ``files``: the sha256 of files it hashed while writing them, by path relative to the
    stage (the manifest hashes the rest itself). ``values``: per parameter, its dtype, shape
    and the sha256 of its values' bytes (``outputs.value_digest``), whatever the file format
    does with them: two stages of the same checkpoint hold the same values even where a
    format cannot give the same bytes twice (MaxText's OCDBT checkpoints)."""

    files: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """A tiny synthetic checkpoint a family declares; the test suite builds every example
    through the DAG (PASS) and again with ``perturb`` applied to its stage (FAIL)."""

    name: str  # the catalog model name the tests use (and config.yaml's default targets)
    source: str  # synthetic://<family>?...
    options: dict[str, Any] = field(default_factory=dict)  # the catalog model's options
    moe: bool = False  # a mixture of experts: the tests also perturb its router and experts
    # Another family's example whose checkpoint, byte for byte, this one builds with another
    # implementation: the two are crosschecked (config `crosschecks`, the tests' builds).
    same_checkpoint_as: str = ""


class Family(Protocol):
    name: str  # the catalog's `family:` key
    environment: str  # which envs/<environment>.lock.txt and config images.<environment>
    examples: tuple[Example, ...]
    model_types: tuple[str, ...]  # the config.json model_types ``recognize`` may accept

    def recognize(
        self, hf_config: dict[str, Any], source: str, forced: dict[str, Any]
    ) -> dict[str, Any] | None:
        """For ``onnxforge build SOURCE``: the catalog model's ``options`` for a checkpoint with
        this config.json, or None when the family does not build it. ``forced``: options the
        user chose (``--maxtext-model``), which win over what the family would pick. Raises
        InputError (naming ``source``) when it is this family's but ambiguous."""

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        """Write a deterministic tiny checkpoint in the Hugging Face layout (transformers)."""

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Staged:
        """Write the staged parameters and a Hugging Face ``config.json`` (cut to ``layers``)
        into ``out_dir``, a fresh directory; ``options`` are the catalog model's settings.
        Returns the sha256 of the files it hashed while writing them and the digest of every
        parameter's values (``Staged``)."""

    def load(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        """The staged model, for jax2onnx to export and ``jax.jit`` to run."""

    def load_decoder(self, stage_dir: Path, dtype: Any) -> LoadedDecoder:
        """The staged model with a KV cache, for the ``kv`` export and the generation gates."""

    def reference_logits(
        self, checkpoint_dir: Path, stage_dir: Path, inputs: list[Any]
    ) -> list[Any]:
        """Logits of an independent implementation (transformers, PyTorch), float32, on the
        downloaded files cut to the staged layers."""

    def reference_generate(
        self, checkpoint_dir: Path, stage_dir: Path, prompt: Any, steps: int
    ) -> tuple[list[int], Any]:
        """transformers' ``generate(do_sample=False)`` from ``prompt [1, length]`` for
        ``steps`` tokens (no early stop): the tokens and each step's logits ``[steps, vocab]``
        (float32), on the downloaded files cut to the staged layers (``transformers_generate``)."""

    def load_taps(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        """The staged model with debug taps: ``apply(params, token_ids) -> (logits, taps)``,
        ``taps`` by ``diagnosis.tap`` name (per layer: attention, mlp, output; MoE layers
        also router_logits and experts), for the diagnosis and its debug ONNX export."""

    def reference_taps(
        self, checkpoint_dir: Path, stage_dir: Path, token_ids: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The reference's logits and taps (the same names) on one input."""

    def perturb(self, stage_dir: Path, part: str = PERTURB_DEFAULT) -> str:
        """Scale one staged tensor of layer 1 in place (every shape still fits); returns its
        name. ``part``: one of ``PERTURB_PARTS`` (``expert`` and ``router`` for MoE models).
        The registry tests use it to prove that the gates bite and the diagnosis points."""


def read_config_json(directory: Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict, or an error naming the file."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise InputError(f"{path}: missing; a checkpoint needs its config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def write_stage_config(
    hf_config: dict[str, Any], source: Path, out_dir: Path, layers: int | None
) -> dict[str, Any]:
    """Write the Hugging Face config.json a stage holds, cut to its first ``layers`` layers.

    A layer-truncated stage lets a real-width model be checked on a small machine; the
    reference then loads the same layers from this config.
    """
    config = dict(hf_config)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if layers is not None:
        available = config.get("num_hidden_layers")
        if not isinstance(available, int) or not 0 < layers <= available:
            raise InputError(
                f"{source}: cannot keep {layers} layers; num_hidden_layers is {available}"
            )
        config["num_hidden_layers"] = layers
        if isinstance(config.get("layer_types"), list):
            config["layer_types"] = config["layer_types"][:layers]
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def randomize_torch_model(model: Any, init_std: float) -> None:
    """Every tensor random, norms near one, the rest near zero: a mapping mistake anywhere then
    changes the logits, which an init of ones and zeros would hide. Seed torch first.

    The float buffers the checkpoint saves too (DeepSeek V3's routing correction bias, zero
    at init); not the ones it does not save (RoPE frequencies)."""
    import torch

    saved = model.state_dict().keys()
    buffers = [(n, b) for n, b in model.named_buffers() if n in saved and b.is_floating_point()]
    with torch.no_grad():
        for name, tensor in sorted([*model.named_parameters(), *buffers]):
            noise = torch.randn(tensor.shape) * init_std
            tensor.copy_(1.0 + noise if is_norm_scale(name.split(".")) else noise)


def is_norm_scale(path: list[str] | tuple[str, ...]) -> bool:
    """A normalization's scale, in transformers' (``*norm.weight``) or JAX's naming."""
    return any("norm" in part.lower() for part in path[:-1]) and path[-1] in (
        "weight",
        "scale",
        "value",
    )


def load_transformers(model_class: str, checkpoint_dir: Path, config: Any, **options) -> Any:
    """transformers' ``model_class`` from the downloaded files, float32, eager attention, in
    eval mode. Missing weights are an error, never random ones."""
    import torch
    import transformers

    model, info = getattr(transformers, model_class).from_pretrained(
        checkpoint_dir,
        config=config,
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
        **options,
    )
    if info["missing_keys"]:
        raise InputError(
            f"{checkpoint_dir}: transformers found no weights for "
            f"{sorted(info['missing_keys'])[:5]}; the reference would be random"
        )
    return model.eval()


def transformers_logits(
    model_class: str, checkpoint_dir: Path, config: Any, inputs: list[Any], **options
) -> list[Any]:
    """Logits of transformers' ``model_class`` (``load_transformers``) on each input."""
    import numpy as np
    import torch

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    with torch.no_grad():
        return [
            model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()
            for ids in inputs
        ]


def transformers_generate(
    model_class: str, checkpoint_dir: Path, config: Any, prompt: Any, steps: int, **options
) -> tuple[list[int], Any]:
    """Greedy ``generate(do_sample=False)`` of transformers' ``model_class`` with its own
    KV cache: ``steps`` tokens (no end-of-sequence stop, no logits processors) and each
    step's raw logits ``[steps, vocab]`` (float32)."""
    import numpy as np
    import torch
    import transformers

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    ids = torch.from_numpy(np.asarray(prompt, np.int64))
    generation = transformers.GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=steps,
        min_new_tokens=steps,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    logits = torch.cat([step[:1] for step in out.logits], dim=0).float().numpy()
    return tokens, logits


ROUTER_LOGITS_HOOKED = "router logits of layer {}"


def transformers_taps(
    model_class: str, checkpoint_dir: Path, config: Any, token_ids: Any, **options
) -> tuple[Any, dict[str, Any]]:
    """The reference's logits and per-layer taps (``diagnosis.tap`` names) on one input.

    Router logits come from transformers' ``output_router_logits``; the blocks' outputs
    from forward hooks on each decoder layer's ``self_attn``, ``mlp`` and the layer itself
    (what transformers' own output recorder hooks), the chosen experts from its router's
    top-k indices. ``output_hidden_states`` would give the last layer after the final norm.
    """
    import numpy as np
    import torch

    from onnxforge import diagnosis

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    taps: dict[str, Any] = {}
    hooks = []

    def record(name: str, index: int | None = 0):
        def hook(_module, _inputs, output):
            value = output[index] if isinstance(output, tuple) and index is not None else output
            taps[name] = value.detach().float().numpy()

        return hook

    routers = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attn.register_forward_hook(record(diagnosis.tap(i, "attention"))))
        hooks.append(layer.mlp.register_forward_hook(record(diagnosis.tap(i, "mlp"))))
        hooks.append(layer.register_forward_hook(record(diagnosis.tap(i, "output"))))
        router = next((m for m in layer.mlp.modules() if type(m).__name__.endswith("Router")), None)
        if router is not None:
            routers.append(i)
            hooks.append(router.register_forward_hook(record(diagnosis.tap(i, "experts"), 2)))
            # (its logits too, for models whose output has no router_logits: DeepSeek V2)
            hooks.append(router.register_forward_hook(record(ROUTER_LOGITS_HOOKED.format(i), 0)))
    ids = torch.from_numpy(np.asarray(token_ids, np.int64))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_router_logits=bool(routers))
    finally:
        for hook in hooks:
            hook.remove()
    # (a dense model's output has no router_logits, nor DeepSeek V2's)
    for i, logits in zip(routers, getattr(out, "router_logits", None) or (), strict=False):
        taps[diagnosis.tap(i, "router_logits")] = logits.detach().float().numpy()
    for i in routers:
        hooked = taps.pop(ROUTER_LOGITS_HOOKED.format(i))
        taps.setdefault(diagnosis.tap(i, "router_logits"), hooked)
    return out.logits.float().numpy(), taps
