"""GPT-OSS: Hugging Face layout checkpoints, our NNX model, transformers as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import InputError
from onnxforge.families.base import read_config_json, transformers_logits
from onnxforge.families.gpt_oss import openai_layout, synthetic
from onnxforge.families.gpt_oss.config import GptOssConfig
from onnxforge.families.gpt_oss.hf_layout import tensor_rules
from onnxforge.families.gpt_oss.model import GptOss
from onnxforge.safetensors_stream import CheckpointReader


class GptOssFamily:
    name = "gpt_oss"
    environment = "jax"  # envs/jax.lock.txt, image config.images.jax

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        synthetic.synthesize(out_dir, seed, overrides)

    def normalize_config(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The Hugging Face config.json for either layout's config."""
        return openai_layout.to_hf_config(raw) if openai_layout.is_openai_config(raw) else raw

    def read_config(self, checkpoint_dir: Path) -> GptOssConfig:
        raw = read_config_json(checkpoint_dir)
        source = str(Path(checkpoint_dir) / "config.json")
        return GptOssConfig.from_hf(self.normalize_config(raw), source=source)

    def build(self, config: GptOssConfig, dtype: Any) -> GptOss:
        return GptOss(config, dtype=dtype)

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        from onnxforge.stage import stage

        return stage(self.name, checkpoint_dir, out_dir, layers)

    def load(self, stage_dir: Path, dtype: Any) -> GptOss:
        """The staged model (an NNX module: jax2onnx exports it with its weights)."""
        from flax import nnx

        from onnxforge import params_store

        config = self.read_config(stage_dir)
        abstract = nnx.eval_shape(lambda: self.build(config, dtype))
        return params_store.load_into(abstract, Path(stage_dir) / "params", dtype)

    def stage_tensors(self, reader: CheckpointReader, config: GptOssConfig):
        if openai_layout.MARKER in reader:
            rules = openai_layout.tensor_rules(config)
        else:
            quantized = "model.layers.0.mlp.experts.gate_up_proj_blocks" in reader
            rules = tensor_rules(config, quantized)
        return [(rule.sources, rule.targets) for rule in rules]

    def reference_logits(
        self, checkpoint_dir: Path, config_dir: Path, inputs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """transformers' GptOss on the downloaded Hugging Face files, as published, cut to the
        staged number of layers; MXFP4 is dequantized by transformers itself."""
        import transformers

        if not list(Path(checkpoint_dir).glob("*.safetensors")):
            raise InputError(
                f"{checkpoint_dir}: the reference needs the Hugging Face layout (config.json and "
                "*.safetensors at the top of the download); include those files"
            )
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        staged = self.read_config(config_dir)
        config.num_hidden_layers = staged.num_hidden_layers
        config.layer_types = list(staged.layer_types)
        extra = {}
        if getattr(config, "quantization_config", None):
            # On CPU transformers dequantizes MXFP4 with its own decoder.
            extra["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
        return transformers_logits("GptOssForCausalLM", checkpoint_dir, config, inputs, **extra)


FAMILY = GptOssFamily()
