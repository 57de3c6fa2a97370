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

from onnxforge.errors import InputError
from onnxforge.families.base import read_config_json, transformers_logits
from onnxforge.families.maxtext.architectures import (
    ARCHITECTURES,
    architecture,
    maxtext_overrides,
)

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

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        """A tiny checkpoint of ``arch`` (llama, mistral, mixtral, gemma) from transformers."""
        from onnxforge.families.maxtext.synthetic import synthesize

        synthesize(out_dir, seed, overrides)

    def normalize_config(self, raw: dict[str, Any]) -> dict[str, Any]:
        return raw

    def read_config(self, directory: Path) -> MaxTextModel:
        hf_config = read_config_json(directory)
        chosen = Path(directory) / MAXTEXT_JSON
        if chosen.exists():
            settings = json.loads(chosen.read_text())
            return MaxTextModel(settings["model_name"], settings["overrides"], hf_config)
        arch = architecture(hf_config, str(Path(directory) / "config.json"))
        return MaxTextModel(arch.default_model, maxtext_overrides(hf_config), hf_config)

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        from onnxforge.families.maxtext import convert
        from onnxforge.stage import write_config

        options = options or {}
        write_config(self.name, checkpoint_dir, out_dir, layers)
        hf_config = read_config_json(out_dir)
        arch = architecture(hf_config, str(Path(checkpoint_dir) / "config.json"))
        model = MaxTextModel(
            options.get("model", arch.default_model),
            {**maxtext_overrides(hf_config), **options.get("overrides", {})},
            hf_config,
        )
        weights = convert.convert(arch.converter, Path(checkpoint_dir), hf_config)
        self._check_shapes(model, convert.flatten(weights), checkpoint_dir)
        convert.save(weights, Path(out_dir) / CHECKPOINT)
        settings = {"model_name": model.model_name, "overrides": model.overrides}
        (Path(out_dir) / MAXTEXT_JSON).write_text(json.dumps(settings, indent=2) + "\n")

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

    def load(self, stage_dir: Path, dtype: Any):
        """The staged model as a pure ``token ids -> logits`` function (jit- and export-ready)."""
        from onnxforge.families.maxtext import convert, runtime

        model = self.read_config(stage_dir)
        config = runtime.make_config(model.model_name, model.overrides, np.dtype(dtype).name)
        params = convert.flatten(convert.load(Path(stage_dir) / CHECKPOINT))
        return runtime.forward_function(config, params)

    def reference_logits(
        self, checkpoint_dir: Path, config_dir: Path, inputs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """transformers' own model class on the downloaded files, cut to the staged layers."""
        import transformers

        staged = self.read_config(config_dir).hf_config
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        config.num_hidden_layers = staged["num_hidden_layers"]
        model_class = ARCHITECTURES[staged["model_type"]].transformers_class
        return transformers_logits(model_class, checkpoint_dir, config, inputs)


FAMILY = MaxTextFamily()
