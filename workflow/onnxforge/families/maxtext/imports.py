"""What MaxText imports that onnxforge never runs, kept out of every step's start-up.

MaxText imports TensorFlow for its tf.data input pipelines (``maxtext.input_pipeline``), which
no step runs, and runs without it where it is missing (``try: import tensorflow ... except
ImportError``). The import costs about 5 s of a MaxText step's 20 s start-up (and makes
transformers import Keras), in every stage, export and parity job.
"""

from __future__ import annotations

import sys

UNUSED = ("tensorflow",)  # top-level packages


def skip_unused() -> None:
    """From now on, in this process, ``import tensorflow`` raises ImportError and
    ``importlib.util.find_spec("tensorflow")`` is None, as on an install without it (Python's
    own way: None in sys.modules). Before MaxText is imported; a no-op once it was."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)
