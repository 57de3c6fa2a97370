"""What every config is run with: its input shapes, the seed, and the project's float32 gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxforge.core import checkout

SEQUENCE = 16
PARITY_BATCH = 2
SEED = 0

CONFIG_YAML = checkout.CONFIG_YAML


def float32_gates(config_yaml: Path | None = None) -> dict[str, float]:
    """The gates the survey holds every config to: ``gates.float32`` of config.yaml (by
    default CONFIG_YAML), the ones every float32 build is held to."""
    import yaml

    config = yaml.safe_load((config_yaml or CONFIG_YAML).read_text())
    return known_gates(config["gates"]["float32"])


def known_gates(gates: Any) -> dict[str, float]:
    """``gates`` if it maps names ``metrics.check_gates`` knows to numbers, else ValueError."""
    from onnxforge.steps.parity.metrics import GATE_METRICS

    if not isinstance(gates, dict) or not gates:
        raise ValueError(f"gates must be a non-empty mapping, not {gates!r}")
    unknown = sorted(set(gates) - set(GATE_METRICS))
    if unknown:
        raise ValueError(f"unknown gates {unknown} (known: {sorted(GATE_METRICS)})")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in gates.values()):
        raise ValueError(f"gate bounds must be numbers: {gates!r}")
    return dict(gates)
