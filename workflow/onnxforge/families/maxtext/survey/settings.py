"""What every config is run with: its input shapes and the seed."""

from __future__ import annotations

SEQUENCE = 16
PARITY_BATCH = 2
SEED = 0
GATES = {"max_abs": 1e-3, "kl_max": 1e-4, "top1_min": 1.0}
