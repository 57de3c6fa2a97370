"""Where the workflow lives: the checkout (or an image's /opt/onnxforge) that holds the Snakefile,
config.yaml and envs/. The one place the package looks outside itself: ``ONNXFORGE_WORKFLOW``
when set (images set it), else the source tree this package is installed from (editable)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# workflow/onnxforge/core/checkout.py -> the checkout
ROOT = Path(os.environ.get("ONNXFORGE_WORKFLOW", Path(__file__).resolve().parents[3]))
SNAKEFILE = ROOT / "Snakefile"
CONFIG_YAML = ROOT / "config.yaml"  # the catalog and build settings
ENVS = ROOT / "envs"  # the locks the environments and images are built from


def local_python(environment: str, root: Path = ROOT) -> Path:
    """The python that runs an environment's jobs outside images: the driver's own for ``jax``
    (its `.venv`, activated or not), else ``.venv-<environment>`` of the checkout, which
    ``make env-<environment>`` builds. The rules, `onnxforge build` and the tests ask here."""
    if environment.startswith("jax"):
        return Path(sys.executable)
    return Path(root) / f".venv-{environment}" / "bin" / "python"
