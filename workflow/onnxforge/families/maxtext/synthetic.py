"""Tiny Llama / Mistral / Mixtral / Gemma checkpoints, written by transformers itself.

``synthetic://maxtext?arch=mistral&seed=0``: transformers builds the model from a tiny config
of that architecture and ``save_pretrained`` writes real safetensors and config.json. Every
tensor is random and seeded (norms near one), so a mapping mistake changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxforge.errors import InputError
from onnxforge.families.maxtext.architectures import ARCHITECTURES

OPTIONS = {"arch", "init_std"}


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
    init_std = float(settings.pop("init_std", 0.1))
    unknown = set(settings) - set(arch.tiny)
    if unknown:
        raise InputError(
            f"synthetic://maxtext: unknown parameter(s) {sorted(unknown)}; "
            f"known: {sorted(arch.tiny)} and {sorted(OPTIONS)}"
        )
    config = getattr(transformers, arch.config_class)(**{**arch.tiny, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, arch.transformers_class)(config)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape) * init_std
            param.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    model.save_pretrained(out_dir)
