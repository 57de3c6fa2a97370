"""GPT-OSS: Hugging Face layout checkpoints, our NNX model, transformers as the reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import InputError
from onnxforge.families.gpt_oss import synthetic
from onnxforge.families.gpt_oss.config import GptOssConfig
from onnxforge.families.gpt_oss.hf_layout import tensor_rules
from onnxforge.families.gpt_oss.model import GptOss
from onnxforge.safetensors_stream import CheckpointReader


class GptOssFamily:
    name = "gpt_oss"
    environment = "jax"  # envs/jax.lock.txt, image config.images.jax

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        synthetic.synthesize(out_dir, seed, overrides)

    def read_config(self, checkpoint_dir: Path) -> GptOssConfig:
        path = Path(checkpoint_dir) / "config.json"
        if not path.exists():
            raise InputError(f"{path}: missing; a Hugging Face checkpoint needs its config.json")
        try:
            raw = json.loads(path.read_text())
        except ValueError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from err
        return GptOssConfig.from_hf(raw, source=str(path))

    def build(self, config: GptOssConfig, dtype: Any) -> GptOss:
        return GptOss(config, dtype=dtype)

    def stage_tensors(self, reader: CheckpointReader, config: GptOssConfig):
        quantized = "model.layers.0.mlp.experts.gate_up_proj_blocks" in reader
        return [(rule.sources, rule.targets) for rule in tensor_rules(config, quantized)]

    def reference_logits(
        self, checkpoint_dir: Path, config_dir: Path, inputs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """transformers' GptOss on the downloaded files, with the staged config (so a
        layer-truncated stage is compared with the same layers); MXFP4 is dequantized by
        transformers itself."""
        import torch
        import transformers

        config = transformers.AutoConfig.from_pretrained(config_dir)
        extra = {}
        if getattr(config, "quantization_config", None):
            # On CPU transformers dequantizes MXFP4 with its own decoder.
            extra["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
        model = transformers.GptOssForCausalLM.from_pretrained(
            checkpoint_dir,
            config=config,
            dtype=torch.float32,
            attn_implementation="eager",
            **extra,
        )
        model.eval()
        outputs = []
        with torch.no_grad():
            for ids in inputs:
                logits = model(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64))).logits
                outputs.append(logits.float().numpy())
        return outputs


FAMILY = GptOssFamily()
