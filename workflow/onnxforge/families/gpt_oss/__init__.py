"""GPT-OSS: OpenAI's and Hugging Face's layouts, our NNX model, transformers as the reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
from onnxforge.families.reference import (
    transformers_generate,
    transformers_logits,
    transformers_taps,
)

PARAMS = "params"  # the stage's Orbax parameters, one checkpoint per parameter
LAYER_TENSOR = re.compile(r"^(?:model\.layers|block)\.(\d+)\.")  # both layouts' layer tensors


def is_mxfp4(name: str) -> bool:
    """MXFP4 blocks or scales, as the hub's (``*_blocks``) and OpenAI's (``*.blocks``) ship."""
    return name.endswith(("_blocks", "_scales", ".blocks", ".scales"))


class GptOssFamily:
    name = "gpt_oss"
    environment = "jax"  # envs/jax.lock.txt, image config.images.jax
    examples = (
        Example(
            "tiny-gpt-oss",
            "synthetic://gpt_oss?seed=0",
            moe=True,
            variants=("f32", "f32-kv", "f32-kv-plain", *QUANTIZED_VARIANTS),
        ),
        Example(
            "tiny-gpt-oss-trained",
            f"synthetic://gpt_oss?seed=0&trained={TRAINED_STEPS}",
            moe=True,
            variants=("f32", *QUANTIZED_VARIANTS),
        ),
    )
    model_types = ("gpt_oss",)

    def recognize(self, hf_config: dict[str, Any], source: str, forced: dict[str, Any]):
        return dict(forced) if hf_config.get("model_type") in self.model_types else None

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        from onnxforge.families.gpt_oss import synthetic

        synthetic.synthesize(out_dir, seed, overrides)

    def read_config(self, directory: Path):
        """Our GptOssConfig from a checkpoint's (either layout's) or a stage's config.json."""
        from onnxforge.families.gpt_oss import openai_checkpoint
        from onnxforge.families.gpt_oss.config import GptOssConfig

        raw = openai_checkpoint.hf_config(read_config_json(directory))
        return GptOssConfig.from_hf(raw, source=str(Path(directory) / "config.json"))

    def build(self, config, dtype: Any, sparse_moe: bool = False):
        """The NNX model, parameters zero until loaded; call under ``nnx.eval_shape``."""
        from onnxforge.families.gpt_oss.model import GptOss

        return GptOss(config, dtype=dtype, sparse_moe=sparse_moe)

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Staged:
        """Tensor by tensor (``families.staging``) into Orbax parameters under ``params/``.

        MXFP4 expert kernels stay packed: each kernel's blocks and scales are staged as the
        checkpoint holds them (``<kernel>.mxfp4_blocks``, ``.mxfp4_scales``), so staging
        copies bytes; ``load`` decodes them.
        """
        import numpy as np
        from flax import nnx

        from onnxforge.core import params_store
        from onnxforge.core.safetensors_stream import CheckpointReader, check_shards_indexed
        from onnxforge.families import staging
        from onnxforge.families.gpt_oss import hf_checkpoint, openai_checkpoint

        raw = openai_checkpoint.hf_config(read_config_json(checkpoint_dir))
        source = Path(checkpoint_dir) / "config.json"
        checkpoint_layers = self.read_config(checkpoint_dir).num_hidden_layers  # checks types
        write_stage_config(raw, source, out_dir, layers)
        config = self.read_config(out_dir)
        abstract = nnx.eval_shape(lambda: self.build(config, np.float32))
        expected = {path: shape for path, (shape, _) in params_store.state_shapes(abstract).items()}
        reader = CheckpointReader(checkpoint_dir)
        if openai_checkpoint.MARKER in reader:
            quantized, rules = True, openai_checkpoint.tensor_rules(config)
        else:
            check_shards_indexed(checkpoint_dir)  # the reference reads the shards at parity
            quantized = "model.layers.0.mlp.experts.gate_up_proj_blocks" in reader
            rules = hf_checkpoint.tensor_rules(config, quantized)
        if quantized:
            expected = hf_checkpoint.packed_experts(expected)
        rules = [(rule.sources, rule.targets) for rule in rules]

        def left_out(name: str) -> bool:  # a layer a truncated stage does not keep
            match = LAYER_TENSOR.match(name)
            return bool(match) and config.num_hidden_layers <= int(match[1]) < checkpoint_layers

        staging.check_tensor_set(reader, rules, may_skip=left_out, packed=is_mxfp4)
        return staging.write_params(reader, rules, expected, Path(out_dir) / PARAMS)

    def load_module(self, stage_dir: Path, dtype: Any, sparse_moe: bool = False):
        """The staged NNX model, packed MXFP4 experts decoded kernel by kernel."""
        from flax import nnx

        from onnxforge.core import params_store
        from onnxforge.families.gpt_oss import mxfp4

        config = self.read_config(stage_dir)
        abstract = nnx.eval_shape(lambda: self.build(config, dtype, sparse_moe))
        packings = {mxfp4.FORMAT: params_store.Packing(mxfp4.PARTS, mxfp4.decode_experts)}
        return params_store.load_into(abstract, Path(stage_dir) / PARAMS, dtype, packings)

    def load(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        from flax import nnx

        model = self.load_module(stage_dir, dtype)
        config = model.config
        graphdef, state = nnx.split(model)
        return LoadedModel(
            apply=lambda params, ids: nnx.merge(graphdef, params)(ids),
            params=state,
            vocab_size=config.vocab_size,
        )

    def genai_type(self, hf_config: dict[str, Any], source: str) -> str | None:
        return "gptoss"  # GenAI's own GPT-OSS driver (its builder's name for the model)

    def load_decoder(self, stage_dir: Path, dtype: Any) -> LoadedDecoder:
        from flax import nnx

        # Sparse experts: each token runs its top k in ONNX (sparse_moe).
        model = self.load_module(stage_dir, dtype, sparse_moe=True)
        config = model.config
        graphdef, state = nnx.split(model)
        return LoadedDecoder(
            step=lambda params, *inputs: nnx.merge(graphdef, params).decode_step(*inputs),
            params=state,
            vocab_size=config.vocab_size,
            num_layers=config.num_hidden_layers,
            kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
        )

    def load_taps(self, stage_dir: Path, dtype: Any) -> LoadedModel:
        from flax import nnx

        from onnxforge.families.gpt_oss.taps import forward_with_taps

        model = self.load_module(stage_dir, dtype)
        graphdef, state = nnx.split(model)
        return LoadedModel(
            apply=lambda params, ids: forward_with_taps(nnx.merge(graphdef, params), ids),
            params=state,
            vocab_size=model.config.vocab_size,
        )

    def reference_logits(self, checkpoint_dir: Path, stage_dir: Path, inputs: list) -> list:
        """transformers' GptOss on the downloaded Hugging Face files, as published, cut to the
        staged number of layers; MXFP4 is dequantized by transformers itself."""
        config, extra = self._reference_config(checkpoint_dir, stage_dir)
        return transformers_logits("GptOssForCausalLM", checkpoint_dir, config, inputs, **extra)

    def reference_generate(self, checkpoint_dir: Path, stage_dir: Path, prompt, steps: int):
        config, extra = self._reference_config(checkpoint_dir, stage_dir)
        return transformers_generate(
            "GptOssForCausalLM", checkpoint_dir, config, prompt, steps, **extra
        )

    def reference_taps(self, checkpoint_dir: Path, stage_dir: Path, token_ids) -> tuple:
        config, extra = self._reference_config(checkpoint_dir, stage_dir)
        return transformers_taps("GptOssForCausalLM", checkpoint_dir, config, token_ids, **extra)

    def _reference_config(self, checkpoint_dir: Path, stage_dir: Path) -> tuple:
        import transformers

        if not list(Path(checkpoint_dir).glob("*.safetensors")):
            raise InputError(
                f"{checkpoint_dir}: the reference needs the Hugging Face layout (config.json and "
                "*.safetensors at the top of the download); include those files"
            )
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        staged = self.read_config(stage_dir)
        config.num_hidden_layers = staged.num_hidden_layers
        config.layer_types = list(staged.layer_types)
        extra = {}
        if getattr(config, "quantization_config", None):
            # On CPU transformers dequantizes MXFP4 with its own decoder.
            extra["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
        return config, extra

    def perturb(self, stage_dir: Path, part: str = PERTURB_DEFAULT) -> str:
        from onnxforge.core import params_store

        name = PERTURBED[part]
        # "expert": expert 0 alone (the expert axis comes first)
        params_store.rescale(Path(stage_dir) / PARAMS / name, 1.5, 0 if part == "expert" else None)
        return name


# Family.perturb's parts: the tensor of layer 1 each scales ("expert": its expert 0).
PERTURBED = {
    "attention": "layers.1.attention.o_kernel",
    "mlp": "layers.1.mlp.down_kernel",
    "expert": "layers.1.mlp.up_kernel",
    "router": "layers.1.mlp.router_kernel",
}


FAMILY = GptOssFamily()
