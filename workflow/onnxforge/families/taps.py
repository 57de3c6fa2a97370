"""The names of the debug taps every side gives (JAX, the debug ONNX export, transformers):
per decoder layer, the blocks' outputs and, for MoE layers, the router's logits and choices;
past the last layer, the final norm's output and the LM head's (tied or not; before any final
logit soft cap). The contract between a family's taps and the diagnosis that compares them
(NumPy-free)."""

from __future__ import annotations

PARTS = ("attention", "mlp", "output", "router_logits", "experts")


HIDDEN_PARTS = ("attention", "mlp", "output")


def tap(layer: int, part: str) -> str:
    """A tap's name, the same on every side: ``layers.<i>.<part>``."""
    return f"layers.{layer}.{part}"


def parse_tap(name: str) -> tuple[int, str]:
    _, layer, part = name.split(".", 2)
    return int(layer), part


FINAL = "final"
FINAL_PARTS = ("norm", "lm_head")  # in the order the model computes them


def final_tap(part: str) -> str:
    """A tap past the last layer: ``final.norm``, ``final.lm_head``."""
    if part not in FINAL_PARTS:
        raise ValueError(f"{part!r} is not one of {FINAL_PARTS}")
    return f"{FINAL}.{part}"


def is_final(name: str) -> bool:
    return name.startswith(f"{FINAL}.")
