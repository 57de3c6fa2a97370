"""MaxText's general converter, ``checkpoint_conversion.to_maxtext`` (Mixtral, Llama 3.1,
Gemma 2/3, Qwen, ... : its PARAM_MAPPING and hooks), run on a local checkpoint.

Its mapping reads the model's dimensions from a table of published Hugging Face configs
(HF_MODEL_CONFIGS); we put the checkpoint's own config.json there for the run, so tiny and
layer-truncated checkpoints convert with the same mapping. It saves unscanned float32 weights
as a MaxText checkpoint, which we read back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from onnxforge.families.maxtext import runtime
from onnxforge.families.maxtext.architectures import maxtext_overrides


def convert(checkpoint_dir: Path, hf_config: dict[str, Any], mapping: str) -> dict[str, Any]:
    """``mapping``: the to_maxtext model key whose mapping applies, e.g. mixtral-8x7b."""
    import transformers
    from maxtext.checkpoint_conversion import to_maxtext
    from maxtext.checkpoint_conversion.utils import hf_model_configs

    from onnxforge.families.maxtext.convert import load

    config = transformers.AutoConfig.for_model(**hf_config)
    with tempfile.TemporaryDirectory(prefix="onnxforge-to-maxtext-") as scratch:
        overrides = {**maxtext_overrides(hf_config), "base_output_directory": scratch}
        argv = runtime.config_argv(mapping, overrides)
        with mock.patch.dict(hf_model_configs.HF_MODEL_CONFIGS, {mapping: config}):
            to_maxtext.main(
                argv,
                # Its lazy loader streams tensor by tensor, but its lazy arrays save only
                # through a sharded (multi-device) save; eager reads the whole checkpoint.
                lazy_load_tensors=False,
                hf_model_path=str(Path(checkpoint_dir).resolve()),
                save_dtype="float32",
                simulated_cpu_devices_count=1,
            )
        return load(Path(scratch))
