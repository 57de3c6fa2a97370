"""Tiny Llama / Mistral / Mixtral / Gemma checkpoints, written by transformers itself.

``synthetic://maxtext?arch=mistral&seed=0``: transformers builds the model from a tiny config
of that architecture and ``save_pretrained`` writes real safetensors and config.json. Every
tensor is random and seeded (norms near one), so a mapping mistake changes the logits.
``variant=llama3.2``: the architecture's tiny config with that variant's changes
(``Architecture.variants``).

For ``arch=gemma`` the same weights are also written in Google's Flax layout under ``flax/``,
as the hub ships both layouts of one model (``flax=false``: the Hugging Face layout only, as
fine-tuned Gemmas come; stage then writes the Flax layout itself).

``trained=STEPS``: the randomized model then trained on the project's passage (``training``),
so that quantization has peaked logits to lose; ``training.json`` records the losses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from onnxforge.core import texts
from onnxforge.core.errors import InputError
from onnxforge.families import training
from onnxforge.families.maxtext.architectures import ARCHITECTURES
from onnxforge.families.synthetic import randomize_torch_model

OPTIONS = {"arch", "variant", "init_std", "flax", "trained"}
FLAX = "flax"  # gemma: the Flax/Orbax copy of the weights (gemma_flax.py)


def synthesize(out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
    import torch
    import transformers

    settings = dict(overrides)
    arch_name = str(settings.pop("arch", "llama"))
    if arch_name not in ARCHITECTURES:
        raise InputError(
            f"synthetic://maxtext: unknown arch {arch_name!r}; known: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[arch_name]
    if arch_name == "gpt_oss":  # the gpt_oss family's writer: the same checkpoint, byte for byte
        from onnxforge.families.gpt_oss.synthetic import synthesize as gpt_oss_synthesize

        gpt_oss_synthesize(out_dir, seed, settings)
        return
    variant = str(settings.pop("variant", ""))
    if variant and variant not in arch.variants:
        raise InputError(
            f"synthetic://maxtext: arch {arch_name} has no variant {variant!r}; "
            f"known: {sorted(arch.variants)}"
        )
    # A copy: transformers' config classes write into the RoPE dicts they are given.
    tiny = copy.deepcopy(arch.variants[variant] if variant else arch.tiny)
    init_std = float(settings.pop("init_std", 0.1))
    flax = str(settings.pop("flax", "true")).lower() != "false"  # gemma: also the Flax layout
    trained = training.trained_steps(settings.pop("trained", 0), "synthetic://maxtext")
    unknown = set(settings) - set(tiny)
    if unknown:
        raise InputError(
            f"synthetic://maxtext: unknown parameter(s) {sorted(unknown)}; "
            f"known: {sorted(tiny)} and {sorted(OPTIONS)}"
        )
    config = getattr(transformers, arch.config_class)(**{**tiny, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, arch.transformers_class)(config)
    randomize_torch_model(model, init_std)
    texts.write_tiny_tokenizer(Path(out_dir), config.vocab_size)
    if trained:
        training.train_synthetic(model, Path(out_dir), trained, seed, "synthetic://maxtext")
    model.save_pretrained(out_dir)
    if arch_name == "gemma" and flax:
        from onnxforge.families.maxtext.gemma_flax import write_gemma_flax

        weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        write_gemma_flax(weights.__getitem__, config.to_dict(), Path(out_dir) / FLAX)
