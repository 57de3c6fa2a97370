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

from onnxforge.core.errors import InputError

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
    # The variants it is built in by default (config.yaml's ``targets: [{examples: declared}]``)
    # and in the registry DAG test: each one it is known to pass.
    variants: tuple[str, ...] = ("f32",)


# The variants a quantization can be judged in (config.yaml: int4-kv, int8-kv): an architecture
# that declares them builds its tiny example in them too (random weights: the quality gate's
# figures reported, not gated) and a trained twin (tiny-<name>-trained: ``trained=`` steps on
# the project's text, families/training.py), whose quality the gates judge.
QUANTIZED_VARIANTS = ("int4-kv", "int8-kv")
TRAINED_STEPS = 200


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

    def genai_type(self, hf_config: dict[str, Any], source: str) -> str | None:
        """ONNX Runtime GenAI's ``model.type`` for a staged config.json (which of its drivers
        runs the KV graph), as the architecture declares it; None where GenAI runs none."""

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
        ``taps`` by ``families.taps.tap`` name (per layer: attention, mlp, output; MoE layers
        also router_logits and experts), for the diagnosis and its debug ONNX export."""

    def reference_taps(
        self, checkpoint_dir: Path, stage_dir: Path, token_ids: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The reference's logits and taps (the same names) on one input."""

    def perturb(self, stage_dir: Path, part: str = PERTURB_DEFAULT) -> str:
        """Scale one staged tensor of layer 1 in place (every shape still fits); returns its
        name. ``part``: one of ``PERTURB_PARTS`` (``expert`` and ``router`` for MoE models).
        The registry tests use it to prove that the gates bite and the diagnosis points."""


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
