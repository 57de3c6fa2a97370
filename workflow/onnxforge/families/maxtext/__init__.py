"""MaxText: Llama, Mistral, Mixtral, Gemma, ... as MaxText configures and converts them.

Runs in the ``maxtext`` environment (envs/maxtext.lock.txt). MaxText is imported inside the
methods, so the ``jax`` environment (the Snakefile, the catalog) can name this family without
having MaxText installed.

Stage writes ``config.json`` (the Hugging Face config, cut to ``layers``), ``maxtext.json``
(the MaxText model and the overrides that match the checkpoint) and ``checkpoint/``, a MaxText
Orbax checkpoint (``0/items``, unscanned) written by MaxText's own saver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.core import progress
from onnxforge.core.errors import InputError
from onnxforge.core.hf_config import read_config_json
from onnxforge.families.base import (
    PERTURB_DEFAULT,
    QUANTIZED_VARIANTS,
    TRAINED_STEPS,
    Example,
    LoadedDecoder,
    LoadedModel,
    Staged,
    write_stage_config,
)
from onnxforge.families.maxtext import architectures, imports
from onnxforge.families.maxtext.architectures import ARCHITECTURES, architecture
from onnxforge.families.maxtext.architectures.base import check_numbers
from onnxforge.families.reference import (
    transformers_generate,
    transformers_logits,
    transformers_taps,
)

imports.skip_unused()  # before any of MaxText's: TensorFlow's start-up, for nothing (imports.py)

MAXTEXT_JSON = "maxtext.json"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class MaxTextModel:
    """What stage decided: the MaxText model name and the overrides, plus the HF config."""

    model_name: str
    overrides: dict[str, Any]
    hf_config: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config["vocab_size"])


class MaxTextFamily:
    name = "maxtext"
    environment = "maxtext"  # envs/maxtext.lock.txt, image config.images.maxtext
    # One tiny checkpoint per architecture and variant: adding one adds its tests.
    examples = tuple(
        Example(
            f"tiny-{name}",
            f"synthetic://maxtext?arch={arch.model_type}{query}&seed=0",
            {"model": arch.default_model},
            moe=arch.moe,
            same_checkpoint_as=arch.same_checkpoint_as,
            variants=arch.export_variants
            + (QUANTIZED_VARIANTS if arch.quantized and not query else ()),
        )
        for arch in ARCHITECTURES.values()
        for name, query in [
            (arch.model_type, ""),
            *((variant, f"&variant={variant}") for variant in arch.variants),
        ]
    ) + tuple(
        Example(
            f"tiny-{arch.model_type}-trained",
            f"synthetic://maxtext?arch={arch.model_type}&seed=0&trained={TRAINED_STEPS}",
            {"model": arch.default_model},
            moe=arch.moe,
            variants=("f32", *QUANTIZED_VARIANTS),
        )
        for arch in ARCHITECTURES.values()
        if arch.quantized
    )
    model_types = tuple(sorted({t for arch in ARCHITECTURES.values() for t in arch.hf_model_types}))

    def recognize(self, hf_config: dict[str, Any], source: str, forced: dict[str, Any]):
        """The MaxText model config from the architecture table (``hf_model_types``, then
        ``hf_rope_types``); a forced ``model`` (--maxtext-model) for any model_type it reads."""
        if hf_config.get("model_type") not in self.model_types:
            return None
        if "model" in forced:
            return dict(forced)
        return {"model": architectures.recognize(hf_config, source).default_model, **forced}

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        """A tiny checkpoint of ``arch`` (a name in architectures.ARCHITECTURES) from
        transformers."""
        from onnxforge.families.maxtext.synthetic import synthesize

        synthesize(out_dir, seed, overrides)

    def read_config(self, directory: Path) -> MaxTextModel:
        hf_config = read_config_json(directory)
        chosen = Path(directory) / MAXTEXT_JSON
        if chosen.exists():
            settings = json.loads(chosen.read_text())
            return MaxTextModel(settings["model_name"], settings["overrides"], hf_config)
        arch = architecture(hf_config, str(Path(directory) / "config.json"))
        return MaxTextModel(arch.default_model, arch.maxtext_overrides(hf_config), hf_config)

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Staged:
        from onnxforge.families import staging
        from onnxforge.families.maxtext import checkpoint

        options = options or {}
        source = Path(checkpoint_dir) / "config.json"
        original = read_config_json(checkpoint_dir)
        hf_config = write_stage_config(original, source, out_dir, layers)
        arch = architecture(hf_config, str(source), options.get("model"))
        check_numbers(hf_config, str(source))
        model_name = options.get("model", arch.default_model)
        refused = arch.unsupported(hf_config, model_name)
        if refused:
            raise InputError(f"{source}: cannot honor {'; '.join(refused)}")
        model = MaxTextModel(
            model_name,
            {**arch.maxtext_overrides(hf_config), **options.get("overrides", {})},
            hf_config,
        )
        # NaN, truncation, a layer past config.json's (DeepSeek V3's multi-token prediction
        # layers are past it by design): named here
        stored = original["num_hidden_layers"] + (original.get("num_nextn_predict_layers") or 0)
        staging.check_checkpoint_values(Path(checkpoint_dir), num_layers=stored)
        with progress.phase("convert (MaxText's converter)"):
            weights = arch.convert(Path(checkpoint_dir), hf_config)
        flat = checkpoint.flatten(weights)
        with progress.phase("check shapes", items=len(flat), item="parameters") as checked:
            self._check_shapes(model, flat, checkpoint_dir)
            checked.advance(items=len(flat))
        total = sum(int(getattr(value, "nbytes", 0)) for value in flat.values())
        del flat
        with progress.phase("save (Orbax)", total, watch=Path(out_dir) / CHECKPOINT):
            checkpoint.save(weights, Path(out_dir) / CHECKPOINT)
        del weights  # read back below: never two copies of the weights at once
        settings = {"model_name": model.model_name, "overrides": model.overrides}
        (Path(out_dir) / MAXTEXT_JSON).write_text(json.dumps(settings, indent=2) + "\n")
        # MaxText's saver writes OCDBT (data files named at random) and timestamps its
        # metadata, so its files differ between two stages of the same weights: the values,
        # read back from what it wrote, are what two clean builds must agree on. The manifest
        # hashes the files.
        with progress.phase("read back values"):
            return Staged(values=checkpoint.value_digests(Path(out_dir) / CHECKPOINT))

    def _check_shapes(self, model: MaxTextModel, flat: dict, checkpoint_dir: Path) -> None:
        from onnxforge.families.maxtext import runtime

        expected = runtime.param_shapes(runtime.make_config(model.model_name, model.overrides))
        missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
        if missing:
            raise InputError(
                f"{checkpoint_dir}: MaxText's converter gave no value for {missing[:5]} of "
                f"MaxText's {model.model_name}; does config.json match the weights?"
            )
        for path, shape in expected.items():
            if tuple(flat[path].shape) != shape:
                raise InputError(
                    f"{checkpoint_dir}: MaxText parameter {'/'.join(path)} converted to shape "
                    f"{tuple(flat[path].shape)}; MaxText's {model.model_name} built from "
                    f"config.json expects {shape}. Does config.json match the weights?"
                )

    def load(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        from onnxforge.families.maxtext import checkpoint, runtime

        model = self.read_config(stage_dir)
        config = runtime.make_config(model.model_name, model.overrides, np.dtype(dtype).name)
        params = checkpoint.flatten(checkpoint.load(Path(stage_dir) / CHECKPOINT))
        apply, param_state = runtime.apply_function(config, params)
        return LoadedModel(apply, param_state, model.vocab_size)

    def genai_type(self, hf_config: dict[str, Any], source: str) -> str | None:
        return architectures.genai_type(hf_config, source)  # each architecture's file says

    def load_decoder(self, stage_dir: Path, dtype: Any) -> LoadedDecoder:
        model = self.read_config(stage_dir)
        arch = architecture(model.hf_config, str(Path(stage_dir) / "config.json"), model.model_name)
        if arch.kv_refusal:
            raise InputError(
                f"{stage_dir}: no KV-cache decoder for MaxText's {model.model_name}: "
                f"{arch.kv_refusal}; export its full-sequence variant (f32) instead"
            )
        from onnxforge.families.maxtext import checkpoint, decoder, runtime

        config = runtime.make_config(model.model_name, model.overrides, np.dtype(dtype).name)
        params = checkpoint.flatten(checkpoint.load(Path(stage_dir) / CHECKPOINT))
        per_layer = len(arch.sublayers)  # Gemma 2: a (local, global) pair of layers, two caches
        step, param_state = decoder.step_function(config, params, per_layer)
        return LoadedDecoder(
            step,
            param_state,
            model.vocab_size,
            num_layers=int(config.num_decoder_layers) * per_layer,
            kv_heads=int(config.num_kv_heads),
            head_dim=cache_head_dim(config),
        )

    def load_taps(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        """MaxText's model with its layers' calls recorded (``taps``)."""
        from onnxforge.families.maxtext import checkpoint, runtime, taps

        model = self.read_config(stage_dir)
        config = runtime.make_config(model.model_name, model.overrides, np.dtype(dtype).name)
        params = checkpoint.flatten(checkpoint.load(Path(stage_dir) / CHECKPOINT))
        apply, param_state = taps.apply_with_taps(config, params)
        return LoadedModel(apply, param_state, model.vocab_size)

    def _reference(self, checkpoint_dir: Path, stage_dir: Path) -> tuple[str, Any]:
        import transformers

        model = self.read_config(stage_dir)
        staged = model.hf_config
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        config.num_hidden_layers = staged["num_hidden_layers"]
        arch = architecture(staged, str(Path(stage_dir) / "config.json"), model.model_name)
        # google/gemma-2b's published "gelu" is the tanh approximation, as transformers reads it
        # before 5 and from 5.23 (GemmaConfig.__post_init__); the maxtext environment's 5.17
        # computes the exact GELU from it.
        if getattr(config, "hidden_act", None) in arch.activation_aliases:
            config.hidden_act = arch.activation_aliases[config.hidden_act]
        return arch.transformers_class, config

    def reference_logits(self, checkpoint_dir: Path, stage_dir: Path, inputs: list) -> list:
        """transformers' own model class on the downloaded files, cut to the staged layers."""
        model_class, config = self._reference(checkpoint_dir, stage_dir)
        return transformers_logits(model_class, checkpoint_dir, config, inputs)

    def reference_generate(self, checkpoint_dir: Path, stage_dir: Path, prompt, steps: int):
        model_class, config = self._reference(checkpoint_dir, stage_dir)
        return transformers_generate(model_class, checkpoint_dir, config, prompt, steps)

    def reference_taps(self, checkpoint_dir: Path, stage_dir: Path, token_ids) -> tuple:
        model_class, config = self._reference(checkpoint_dir, stage_dir)
        logits, taps = transformers_taps(model_class, checkpoint_dir, config, token_ids)
        model = self.read_config(stage_dir)
        arch = architecture(model.hf_config, str(Path(stage_dir) / "config.json"), model.model_name)
        for name in [n for n in taps if n.endswith(".router_logits")]:
            taps[name] = ROUTER_SCORES[arch.router_scores](taps[name])  # as MaxText's gate has
        return logits, taps

    def perturb(self, stage_dir: Path, part: str = PERTURB_DEFAULT) -> str:
        """Scale half of one kernel of layer 1 (every shape still fits): the attention's output
        projection, the MLP's (or MoE's experts') output kernel ``wo``, expert 0's ``wi_0``,
        or the MoE's router (``gate``)."""
        import shutil

        from onnxforge.families.maxtext import checkpoint

        model = self.read_config(stage_dir)
        arch = architecture(model.hf_config, str(Path(stage_dir) / "config.json"), model.model_name)
        weights = checkpoint.load(Path(stage_dir) / CHECKPOINT)
        flat = checkpoint.flatten(weights)
        layers = architectures.decoder_layers({p[1] for p in flat if p[0] == "decoder"})
        layer, suffix = arch.maxtext_layer(1, layers)  # HF's layer 1, as the diagnosis names it
        layer_1 = [p for p in flat if p[:2] == ("decoder", layer) and p[2].endswith(suffix)]
        found = [p for p in layer_1 if PERTURBED[part](p, flat)]
        if not found:
            raise InputError(f"{stage_dir}: layer 1 has no {part} kernel to perturb")
        path = min(found)
        scaled = flat[path][0] if part == "expert" else flat[path]  # "expert": expert 0 alone
        # Half its output features only: a whole kernel scaled would vanish under the norm
        # that follows it in Gemma 2 (post-attention and post-MLP RMSNorm).
        half = scaled.shape[-1] // 2
        scaled[..., :half] = np.asarray(scaled[..., :half]) * 1.5
        shutil.rmtree(Path(stage_dir) / CHECKPOINT)
        checkpoint.save(weights, Path(stage_dir) / CHECKPOINT)
        return "/".join(path)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# Architecture.router_scores: the score function MaxText's gate applies before its router tap.
ROUTER_SCORES = {
    "": lambda logits: logits,
    "softmax": _softmax,
    "sigmoid": lambda logits: 1.0 / (1.0 + np.exp(-logits)),
}


# Family.perturb's parts, by the kernel's role in layer 1 rather than its module's name
# (MaxText names them per architecture: MoeBlock_0, GptOssMlp, GptOssAttention, ...). A routed
# MoE module is the one holding a router (``gate/kernel``) beside its experts.
def _in_moe(path: tuple, flat: dict) -> bool:
    return (*path[:-1], "gate", "kernel") in flat


PERTURBED = {
    "attention": lambda p, flat: "attention" in p[-3].lower() and p[-2:] == ("out", "kernel"),
    "mlp": lambda p, flat: "wo" in p,
    "expert": lambda p, flat: p[-1] == "wi_0" and _in_moe(p, flat),
    "router": lambda p, flat: p[-2:] == ("gate", "kernel"),
}


FAMILY = MaxTextFamily()


def cache_head_dim(config) -> int:
    """The width of the decoder's key and value caches: MaxText's ``head_dim``, or for
    multi-head latent attention (DeepSeek) the wider of its keys (``qk_nope +
    qk_rope_head_dim``) and values (``v_head_dim``), the other padded to it
    (``decoder.pad_to_width``)."""
    if str(getattr(config, "attention_type", "")) == "mla":
        keys = int(config.qk_nope_head_dim) + int(config.qk_rope_head_dim)
        return max(keys, int(config.v_head_dim))
    return int(config.head_dim)
