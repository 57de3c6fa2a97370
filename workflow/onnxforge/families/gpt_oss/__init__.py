"""GPT-OSS: Hugging Face layout checkpoints, our NNX model, transformers as the reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import InputError
from onnxforge.families.gpt_oss.config import GptOssConfig
from onnxforge.families.gpt_oss.hf_layout import tensor_rules
from onnxforge.families.gpt_oss.model import GptOss

# A tiny model that still has every feature: grouped heads, sinks, a sliding window shorter
# than the parity inputs, YaRN, several experts with top-k routing.
TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 16,
    "max_position_embeddings": 4096,
}


class GptOssFamily:
    name = "gpt_oss"

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        import torch
        import transformers

        unknown = set(overrides) - set(TINY) - {"init_std", "tie_word_embeddings"}
        if unknown:
            raise InputError(
                f"synthetic://gpt_oss: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(TINY)}, init_std, tie_word_embeddings"
            )
        settings = {**TINY, **overrides}
        init_std = float(settings.pop("init_std", 0.1))
        config = transformers.GptOssConfig(**settings)
        torch.manual_seed(seed)
        model = transformers.GptOssForCausalLM(config)
        # Every tensor random (norms near one, biases near zero): a mapping mistake anywhere
        # then changes the logits, which an init of ones and zeros would hide.
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                noise = torch.randn(param.shape) * init_std
                param.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
        model.save_pretrained(out_dir)

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

    def stage_tensors(self, checkpoint_dir: Path, config: GptOssConfig):
        return [(rule.checkpoint_name, rule.targets) for rule in tensor_rules(config)]

    def reference_logits(self, checkpoint_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        import transformers

        model = transformers.GptOssForCausalLM.from_pretrained(
            checkpoint_dir, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        outputs = []
        with torch.no_grad():
            for ids in inputs:
                logits = model(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64))).logits
                outputs.append(logits.float().numpy())
        return outputs


FAMILY = GptOssFamily()
