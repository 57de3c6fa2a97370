"""What every family's tiny checkpoints share: transformers' model randomized deterministically
(norm scales around one, every other float around zero), so that parity compares real numbers."""

from __future__ import annotations

from typing import Any


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
